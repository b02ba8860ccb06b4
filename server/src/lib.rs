//! The locker lock server.
