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
//! The directory is flat (the server keeps its files side by side), which keeps the inode
//! bookkeeping to one map by name. Mounting needs `/dev/fuse` and root.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
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

/// A mounted faulty disk; unmounted on drop. Files are kept in `backing`.
pub struct FaultyDisk {
    pub mount_point: PathBuf,
    pub backing: PathBuf,
    fault: Arc<AtomicU8>,
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
        let fs = Passthrough {
            backing: backing.clone(),
            fault: fault.clone(),
            inner: Mutex::new(Inner::default()),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("locker-faulty-disk".into())];
        let session = fuser::spawn_mount(fs, &mount_point, &config)
            .map_err(|e| format!("cannot mount a FUSE file system ({e})"))?;
        Ok(FaultyDisk {
            mount_point,
            backing,
            fault,
            _session: session,
            _dir: temp,
        })
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }
}

/// No caching in the kernel: every call reaches the file system, so a fault takes effect at once.
const TTL: Duration = Duration::ZERO;

struct Passthrough {
    backing: PathBuf,
    fault: Arc<AtomicU8>,
    inner: Mutex<Inner>,
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
        _ino: INodeNo,
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
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.fault() == Fault::FailingSync {
            return reply.error(Errno::EIO);
        }
        match self.with_file(fh, File::sync_all) {
            Ok(()) => reply.ok(),
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
        match File::open(&self.backing).and_then(|dir| dir.sync_all()) {
            Ok(()) => reply.ok(),
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
        match std::fs::remove_file(self.backing.join(name)) {
            Ok(()) => {
                self.inner().forget_name(name);
                reply.ok();
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}
