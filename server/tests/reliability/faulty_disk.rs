//! A disk that can turn bad under a running server: a FUSE file system that passes every call
//! through to a directory, until the test switches it to a fault. Files the server already
//! holds open are affected too, which a read-only remount cannot do (Linux refuses to remount
//! read-only while a file is open for writing, and a read-only bind mount on top does not reach
//! files opened below it).
//!
//! - `Fault::ReadOnly` acts like a file system that the kernel remounted read-only after an
//!   error (ext4's `errors=remount-ro`): every change (write, create, rename, unlink, truncate,
//!   opening for writing) fails with `EROFS`; reads work.
//! - `Fault::FailingSync` acts like a disk whose writes fail: writes land in the page cache,
//!   but `fsync` reports `EIO`, so nothing is known to be on disk.
//!
//! It can also stand for a machine about to lose power:
//!
//! - [`FaultyDisk::stall`] holds a chosen call (the write or fsync of a file, a rename, a
//!   directory fsync) until [`FaultyDisk::power_cut`]: the server sits in that call, other calls
//!   go on (several FUSE threads), and the test can SIGKILL it there. The stalled call then
//!   fails without effect.
//! - It keeps what a real disk is sure to hold after a power cut: a file's data as of its last
//!   fsync, and the directory's names as of its last fsync. [`FaultyDisk::power_cut`] can put
//!   the directory back to exactly that, the least a crash may leave; without it the test sees
//!   the most (everything the server wrote, as after a plain SIGKILL).
//!
//! The directory is flat (the server keeps its files side by side), which keeps the inode
//! bookkeeping to one map by name. Mounting needs `/dev/fuse` and root.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

/// What the disk does wrong, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    ReadOnly = 1,
    FailingSync = 2,
}

/// A file system call, as a stall names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A write to the file named.
    Write,
    /// An fsync (or fdatasync) of the file named.
    Fsync,
    /// A rename of the file named (to any name).
    Rename,
    /// An fsync of the directory (the name is ignored).
    FsyncDir,
}

/// Which call to hold: the first `call` of `name` once the calls in `after` have been seen,
/// in that order.
#[derive(Debug, Clone)]
pub struct Stall {
    pub call: Call,
    pub name: String,
    pub after: Vec<(Call, String)>,
}

/// The stall's progress, shared with the FUSE threads.
#[derive(Default)]
struct StallState {
    armed: Option<Stall>,
    /// How many of the `after` calls were seen.
    after_seen: usize,
    /// Set once a call is held.
    reached: bool,
    /// Set by the power cut: held calls fail, and so does every later one.
    dead: bool,
}

/// What a power cut is sure to leave: each file's data at its last fsync (by inode), the
/// names at the directory's last fsync, and the writes since, by inode.
#[derive(Default)]
struct Durable {
    data: HashMap<u64, Vec<u8>>,
    names: HashMap<OsString, u64>,
    pending: HashMap<u64, Vec<Pending>>,
}

enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

impl Durable {
    fn fsync(&mut self, ino: u64) {
        let data = self.data.entry(ino).or_default();
        for op in self.pending.remove(&ino).unwrap_or_default() {
            match op {
                Pending::Write(offset, bytes) => {
                    let end = offset as usize + bytes.len();
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[offset as usize..end].copy_from_slice(&bytes);
                }
                Pending::SetLen(len) => data.resize(len as usize, 0),
            }
        }
    }
}

/// A mounted faulty disk; unmounted on drop. Files are kept in `backing`.
pub struct FaultyDisk {
    pub mount_point: PathBuf,
    pub backing: PathBuf,
    fault: Arc<AtomicU8>,
    stall: Arc<(Mutex<StallState>, Condvar)>,
    durable: Arc<Mutex<Durable>>,
    _session: BackgroundSession,
    /// Dropped after the session: the directory outlives the mount in it.
    _dir: Arc<tempfile::TempDir>,
}

impl FaultyDisk {
    /// Mounts a healthy disk at `dir/disk`, kept in `dir/backing`; or says why it cannot.
    pub fn mount(temp: Arc<tempfile::TempDir>) -> Result<FaultyDisk, String> {
        let dir = temp.path();
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing".into());
        }
        let mount_point = dir.join("disk");
        let backing = dir.join("backing");
        for d in [&mount_point, &backing] {
            std::fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let stall = Arc::new((Mutex::new(StallState::default()), Condvar::new()));
        let durable = Arc::new(Mutex::new(Durable::default()));
        let fs = Passthrough {
            backing: backing.clone(),
            fault: fault.clone(),
            inner: Mutex::new(Inner::default()),
            stall: stall.clone(),
            durable: durable.clone(),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("locker-faulty-disk".into())];
        // Several threads, so that a stalled call does not hold up the others.
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(fs, &mount_point, &config)
            .map_err(|e| format!("cannot mount a FUSE file system ({e})"))?;
        Ok(FaultyDisk {
            mount_point,
            backing,
            fault,
            stall,
            durable,
            _session: session,
            _dir: temp,
        })
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Holds the call `stall` names, when it comes, until the power cut.
    pub fn stall(&self, stall: Stall) {
        let mut state = lock(&self.stall.0);
        *state = StallState {
            armed: Some(stall),
            ..StallState::default()
        };
    }

    /// True once the stalled call has come (and is held).
    pub fn stalled(&self) -> bool {
        lock(&self.stall.0).reached
    }

    /// The power goes: every held and later call fails without effect. With `least`, the
    /// backing directory is then put back to what the disk was sure to hold (see the module
    /// doc); call it once the server is dead.
    pub fn power_cut(&self, least: bool) {
        {
            let mut state = lock(&self.stall.0);
            state.dead = true;
            self.stall.1.notify_all();
        }
        if !least {
            return;
        }
        let durable = lock(&self.durable);
        for entry in std::fs::read_dir(&self.backing).expect("read the backing directory") {
            std::fs::remove_file(entry.expect("a directory entry").path()).expect("remove a file");
        }
        for (name, ino) in &durable.names {
            let data = durable.data.get(ino).map_or(&[][..], Vec::as_slice);
            std::fs::write(self.backing.join(name), data).expect("write a file back");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// No caching in the kernel: every call reaches the file system, so a fault takes effect at once.
const TTL: Duration = Duration::ZERO;

struct Passthrough {
    backing: PathBuf,
    fault: Arc<AtomicU8>,
    inner: Mutex<Inner>,
    stall: Arc<(Mutex<StallState>, Condvar)>,
    durable: Arc<Mutex<Durable>>,
}

/// Inode numbers by name (the root is 1), and the open files by handle.
#[derive(Default)]
struct Inner {
    names: HashMap<u64, OsString>,
    inodes: HashMap<OsString, u64>,
    files: HashMap<u64, File>,
    next: u64,
}

impl Inner {
    fn inode(&mut self, name: &OsStr) -> u64 {
        if let Some(&ino) = self.inodes.get(name) {
            return ino;
        }
        self.next += 1;
        let ino = self.next + 1;
        self.names.insert(ino, name.to_owned());
        self.inodes.insert(name.to_owned(), ino);
        ino
    }

    fn forget_name(&mut self, name: &OsStr) {
        if let Some(ino) = self.inodes.remove(name) {
            self.names.remove(&ino);
        }
    }

    fn keep(&mut self, file: File) -> FileHandle {
        self.next += 1;
        let fh = self.next;
        self.files.insert(fh, file);
        FileHandle(fh)
    }
}

impl Passthrough {
    fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            1 => Fault::ReadOnly,
            2 => Fault::FailingSync,
            _ => Fault::None,
        }
    }

    fn read_only(&self) -> bool {
        self.fault() == Fault::ReadOnly
    }

    /// Called before `call` on `name` is carried out: holds it if it is the stalled one, until
    /// the power cut. Returns false when the power is gone (the call must fail, with no effect).
    fn proceed(&self, call: Call, name: &OsStr) -> bool {
        let mut state = lock(&self.stall.0);
        if state.dead {
            return false;
        }
        let Some(stall) = state.armed.clone() else {
            return true;
        };
        let named = |c: Call, n: &str| c == call && (c == Call::FsyncDir || name == OsStr::new(n));
        if let Some((c, n)) = stall.after.get(state.after_seen) {
            if named(*c, n) {
                state.after_seen += 1;
            }
            return true;
        }
        if state.reached || !named(stall.call, &stall.name) {
            return true;
        }
        state.reached = true;
        self.stall.1.notify_all();
        while !state.dead {
            state = self.stall.1.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        false
    }

    /// The name of an inode (empty for the root or one not known).
    fn name(&self, ino: INodeNo) -> OsString {
        self.inner().names.get(&ino.0).cloned().unwrap_or_default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backing path of an inode.
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        if ino == INodeNo::ROOT {
            return Ok(self.backing.clone());
        }
        let inner = self.inner();
        let name = inner.names.get(&ino.0).ok_or(Errno::ENOENT)?;
        Ok(self.backing.join(name))
    }

    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let meta = std::fs::metadata(self.path(ino)?).map_err(Errno::from)?;
        let time = |secs: i64, nanos: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
        Ok(FileAttr {
            ino,
            size: meta.len(),
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: if meta.is_dir() {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Runs `f` on the open file `fh`.
    fn with_file<R>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&File) -> io::Result<R>,
    ) -> Result<R, Errno> {
        let inner = self.inner();
        let file = inner.files.get(&fh.0).ok_or(Errno::EBADF)?;
        f(file).map_err(Errno::from)
    }
}

impl Filesystem for Passthrough {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT || !self.backing.join(name).exists() {
            return reply.error(Errno::ENOENT);
        }
        let ino = INodeNo(self.inner().inode(name));
        match self.attr(ino) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.read_only() {
            return reply.error(Errno::EROFS);
        }
        if !self.proceed(Call::Write, &self.name(ino)) {
            return reply.error(Errno::EIO);
        }
        if let Some(size) = size {
            lock(&self.durable)
                .pending
                .entry(ino.0)
                .or_default()
                .push(Pending::SetLen(size));
        }
        let changed = self.path(ino).and_then(|path| {
            if let Some(size) = size {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(size))
                    .map_err(Errno::from)?;
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(Errno::from)?;
            }
            self.attr(ino)
        });
        match changed {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if write && self.read_only() {
            return reply.error(Errno::EROFS);
        }
        // Without O_APPEND: the kernel gives every write its offset.
        let opened = self.path(ino).and_then(|path| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)
                .map_err(Errno::from)
        });
        match opened {
            Ok(file) => reply.opened(self.inner().keep(file), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        if self.read_only() {
            return reply.error(Errno::EROFS);
        }
        if lock(&self.stall.0).dead {
            return reply.error(Errno::EIO);
        }
        let existed = self.backing.join(name).exists();
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(mode & !umask)
            .custom_flags(flags & (libc::O_EXCL | libc::O_TRUNC))
            .open(self.backing.join(name));
        let file = match created {
            Ok(file) => file,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let (ino, fh) = {
            let mut inner = self.inner();
            (INodeNo(inner.inode(name)), inner.keep(file))
        };
        if existed && flags & libc::O_TRUNC != 0 {
            lock(&self.durable)
                .pending
                .entry(ino.0)
                .or_default()
                .push(Pending::SetLen(0));
        }
        match self.attr(ino) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let read = self.with_file(fh, |file| {
            let mut buf = vec![0; size as usize];
            let n = file.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        });
        match read {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.read_only() {
            return reply.error(Errno::EROFS);
        }
        if !self.proceed(Call::Write, &self.name(ino)) {
            return reply.error(Errno::EIO);
        }
        lock(&self.durable)
            .pending
            .entry(ino.0)
            .or_default()
            .push(Pending::Write(offset, data.to_vec()));
        match self.with_file(fh, |file| file.write_all_at(data, offset)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.inner().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.fault() == Fault::FailingSync {
            return reply.error(Errno::EIO);
        }
        if !self.proceed(Call::Fsync, &self.name(ino)) {
            return reply.error(Errno::EIO);
        }
        // No real fsync: what a power cut would leave is what `Durable` keeps, and the tests
        // run faster without the backing disk's fsyncs.
        match self.with_file(fh, |_| Ok(())) {
            Ok(()) => {
                lock(&self.durable).fsync(ino.0);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.fault() == Fault::FailingSync {
            return reply.error(Errno::EIO);
        }
        if !self.proceed(Call::FsyncDir, OsStr::new("")) {
            return reply.error(Errno::EIO);
        }
        match std::fs::metadata(&self.backing) {
            Ok(_) => {
                let names = self.inner().inodes.clone();
                lock(&self.durable).names = names;
                reply.ok()
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if parent != INodeNo::ROOT || newparent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        if self.read_only() {
            return reply.error(Errno::EROFS);
        }
        if !self.proceed(Call::Rename, name) {
            return reply.error(Errno::EIO);
        }
        if let Err(e) = std::fs::rename(self.backing.join(name), self.backing.join(newname)) {
            return reply.error(Errno::from(e));
        }
        let mut inner = self.inner();
        inner.forget_name(newname);
        if let Some(ino) = inner.inodes.remove(name) {
            inner.names.insert(ino, newname.to_owned());
            inner.inodes.insert(newname.to_owned(), ino);
        }
        reply.ok();
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        if self.read_only() {
            return reply.error(Errno::EROFS);
        }
        if lock(&self.stall.0).dead {
            return reply.error(Errno::EIO);
        }
        match std::fs::remove_file(self.backing.join(name)) {
            Ok(()) => {
                self.inner().forget_name(name);
                reply.ok();
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}
