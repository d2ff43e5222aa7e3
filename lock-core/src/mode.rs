//! What a grant is of: the lock, a semaphore permit, a read or a write lock.

/// The largest number of permits a semaphore may have ([`Mode::Permit`]).
pub const MAX_PERMITS: u32 = 10_000;

/// What a grant is of: the lock itself, one permit of a semaphore, or one side of a
/// read-write lock. Each primitive of a name is its own resource: the lock `jobs`, the
/// semaphore `jobs` and the read-write lock `jobs` never block one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// A mutual-exclusion lock: one holder at a time.
    Exclusive,
    /// One of `limit` permits of a semaphore: at most `limit` unexpired grants at once.
    /// Every holder of a semaphore must ask for the same `limit`.
    Permit {
        /// How many permits the semaphore has (1..=[`MAX_PERMITS`]).
        limit: u32,
    },
    /// The read side of a read-write lock: shared with other readers, excluded by a writer.
    Read,
    /// The write side of a read-write lock: excludes readers and other writers.
    Write,
    /// Leadership of an election: one leader at a time, whose metadata value is what it
    /// advertises and whose fencing token is its term.
    Leader,
}

impl Mode {
    /// The primitive's name, for errors and [`Capabilities`](crate::Capabilities) checks.
    pub fn primitive(&self) -> &'static str {
        match self {
            Mode::Exclusive => "lock",
            Mode::Permit { .. } => "semaphore",
            Mode::Read | Mode::Write => "read-write lock",
            Mode::Leader => "election",
        }
    }
}
