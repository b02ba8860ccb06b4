//! Background threads: work that must get done but must not delay the lock traffic (writing a
//! big read, folding the journal into the state file) runs on threads of its own at a lower
//! CPU priority, so the kernel gives it what the runtime's workers and the writer leave.

/// The nice value of a background thread (everything else runs at 0). At 10 the kernel gives
/// it about a tenth of a core's share when the workers want all of it, and everything when
/// they don't.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`]. If it cannot (a platform
/// where the nice value belongs to the process, or a seccomp filter), the thread runs at the
/// workers' priority: slower for them, never wrong.
pub(crate) fn lower_this_threads_priority() {
    // On Linux the nice value belongs to the thread, and `0` names the calling one.
    // SAFETY: setpriority reads no memory of ours.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
}
