//! Integration tests: the real `check`, `in` and `out` binaries, fed JSON on stdin, against the
//! real `locker` server started on a free port with a temporary state file.

mod helpers;
mod stand_in;

mod auth_and_tls;
mod build_holds;
mod leases;
mod locking;
mod lost_answers;
mod older_servers;
mod pinned_certificates;
mod protocol;
mod queue;
mod waiting;
