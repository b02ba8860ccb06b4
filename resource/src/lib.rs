//! The locker Concourse resource.
