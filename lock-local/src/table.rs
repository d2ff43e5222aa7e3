//! The grants of one name's primitive (a lock, a semaphore, a read-write lock) and the rules
//! that admit a new one. Both backends keep their state in a [`Table`]: the memory backend
//! with expiries on tokio's clock, the file backend (for semaphores and read-write locks) with
//! expiries in CLOCK_MONOTONIC nanoseconds, in a record file (see
//! [`table_record`](crate::table_record)).
//!
//! The rules, checked after dropping expired entries:
//!
//! | asked | refused while | then |
//! |---|---|---|
//! | the lock | any grant | one holder |
//! | a permit of `N` | `N` permits are held; another `N` is in use ([`Admit::Mismatch`]) | at most `N` holders |
//! | a read lock | a writer holds it, or a writer waits (an intent) | readers share |
//! | a write lock | a reader or a writer holds it | one writer; a waiting writer leaves an intent |
//! | leadership of an election | any grant | one leader |
//!
//! Every grant takes the next value of the table's one fencing counter, so tokens strictly
//! increase across all the permits of a semaphore, and across the readers and writers of a
//! read-write lock (a writer's token is above every earlier grant's, a reader's above the last
//! writer's). An owner that asks again for what it holds (a retried request) gets its grant
//! back, refreshed, with the same token.

use lock_core::{Error, Mode, OwnerToken, Result};

/// What an entry of a table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Lock,
    Permit,
    Reader,
    Writer,
    /// A waiting writer's intent: not a grant; new readers wait while it lasts.
    Intent,
    /// The leader of an election: an exclusive grant in the election's own table.
    Leader,
}

/// Which resource a name's grants belong to: the lock, the semaphore, the read-write lock and
/// the election of one name are four independent resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Lock,
    Semaphore,
    ReadWrite,
    Election,
}

impl Kind {
    /// Every kind, in the order listings go through them.
    pub(crate) const ALL: [Kind; 4] = [Kind::Lock, Kind::Semaphore, Kind::ReadWrite, Kind::Election];

    /// The mode a fencing counter of this kind is reported with (`limit`: a semaphore's number
    /// of permits, 0 when it has none on record).
    pub(crate) fn counter_mode(self, limit: u32) -> Mode {
        match self {
            Kind::Lock => Mode::Exclusive,
            Kind::Semaphore => Mode::Permit { limit },
            Kind::ReadWrite => Mode::Write,
            Kind::Election => Mode::Leader,
        }
    }
}

impl Role {
    /// The role a grant of `mode` takes; `Unsupported` for a mode this crate does not know.
    pub(crate) fn of(mode: Mode, backend: &'static str) -> Result<Role> {
        match mode {
            Mode::Exclusive => Ok(Role::Lock),
            Mode::Permit { .. } => Ok(Role::Permit),
            Mode::Read => Ok(Role::Reader),
            Mode::Write => Ok(Role::Writer),
            Mode::Leader => Ok(Role::Leader),
            other => Err(Error::Unsupported { backend, capability: format!("{other:?} grants") }),
        }
    }

    pub(crate) fn kind(self) -> Kind {
        match self {
            Role::Lock => Kind::Lock,
            Role::Permit => Kind::Semaphore,
            Role::Reader | Role::Writer | Role::Intent => Kind::ReadWrite,
            Role::Leader => Kind::Election,
        }
    }

    /// The mode of a holder in this role (`limit`: the semaphore's number of permits).
    pub(crate) fn mode(self, limit: u32) -> Mode {
        match self {
            Role::Lock => Mode::Exclusive,
            Role::Permit => Mode::Permit { limit },
            Role::Reader => Mode::Read,
            Role::Writer | Role::Intent => Mode::Write,
            Role::Leader => Mode::Leader,
        }
    }

    /// The role's one-letter tag in files (`-` is an empty slot).
    pub(crate) fn tag(self) -> char {
        match self {
            Role::Lock => 'l',
            Role::Permit => 'p',
            Role::Reader => 'r',
            Role::Writer => 'w',
            Role::Intent => 'i',
            Role::Leader => 'e',
        }
    }

    /// The role of a tag written by [`tag`](Self::tag).
    pub(crate) fn of_tag(tag: char) -> Option<Role> {
        Some(match tag {
            'l' => Role::Lock,
            'p' => Role::Permit,
            'r' => Role::Reader,
            'w' => Role::Writer,
            'i' => Role::Intent,
            'e' => Role::Leader,
            _ => return None,
        })
    }
}

/// One grant (or a waiting writer's intent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<T> {
    pub(crate) owner: OwnerToken,
    pub(crate) fence: u64,
    pub(crate) expires: T,
    pub(crate) role: Role,
}

/// The state of one name's primitive: its fencing counter (kept for the life of the store,
/// across releases and expiries), the semaphore's number of permits while it has holders, and
/// the grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table<T> {
    pub(crate) fence: u64,
    pub(crate) limit: u32,
    pub(crate) entries: Vec<Entry<T>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self { fence: 0, limit: 0, entries: Vec::new() }
    }
}

/// One request to a table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<T> {
    pub(crate) owner: OwnerToken,
    pub(crate) mode: Mode,
    pub(crate) now: T,
    /// When the grant would expire.
    pub(crate) expires: T,
    /// For a waiting writer: when its intent expires if it is not refreshed.
    pub(crate) intent: Option<T>,
    /// The most entries the table may hold (the file record's slots).
    pub(crate) capacity: usize,
}

/// What a table says to an [`Ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit<T> {
    Granted(u64),
    /// Refused; the earliest expiry among what stands in the way.
    Held(Option<T>),
    /// The semaphore's holders use this other number of permits.
    Mismatch(u32),
}

impl<T: Copy + Ord> Table<T> {
    /// Drops the entries expired at `now`.
    pub(crate) fn prune(&mut self, now: T) {
        self.entries.retain(|e| e.expires > now);
    }

    fn count(&self, role: Role) -> usize {
        self.entries.iter().filter(|e| e.role == role).count()
    }

    /// What the table would say to `ask` without granting (`None`: it would grant). Expects
    /// expired entries pruned.
    pub(crate) fn check(&self, ask: &Ask<T>, role: Role) -> Option<Admit<T>> {
        if self.entries.iter().any(|e| e.owner == ask.owner && e.role == role) {
            return None; // a retry of a grant already made
        }
        let earliest = |blocks: &dyn Fn(Role) -> bool| {
            self.entries.iter().filter(|e| blocks(e.role)).map(|e| e.expires).min()
        };
        let blocked = match (role, ask.mode) {
            (Role::Permit, Mode::Permit { limit }) => {
                let held = self.count(Role::Permit);
                if held > 0 && self.limit != limit {
                    return Some(Admit::Mismatch(self.limit));
                }
                if held >= limit as usize {
                    earliest(&|r| r == Role::Permit)
                } else {
                    None
                }
            }
            (Role::Reader, _) => earliest(&|r| matches!(r, Role::Writer | Role::Intent)),
            (Role::Writer, _) => earliest(&|r| matches!(r, Role::Reader | Role::Writer)),
            _ => earliest(&|_| true),
        };
        let others = self.entries.iter().filter(|e| !(e.owner == ask.owner && e.role == Role::Intent));
        match blocked {
            Some(t) => Some(Admit::Held(Some(t))),
            None if others.count() >= ask.capacity => Some(Admit::Held(earliest(&|_| true))),
            None => None,
        }
    }

    /// Grants `ask` if the rules allow (see the module docs), after dropping expired entries.
    /// A refused waiting writer leaves (or refreshes) its intent.
    ///
    /// # Errors
    /// The fencing counter is exhausted (after 2^64 - 1 grants).
    pub(crate) fn acquire(&mut self, ask: &Ask<T>, backend: &'static str) -> Result<Admit<T>> {
        let role = Role::of(ask.mode, backend)?;
        self.prune(ask.now);
        if let Some(refused) = self.check(ask, role) {
            if let (Role::Writer, Some(until), Admit::Held(_)) = (role, ask.intent, refused) {
                self.set_intent(ask, until);
            }
            return Ok(refused);
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.owner == ask.owner && e.role == role) {
            e.expires = ask.expires;
            return Ok(Admit::Granted(e.fence));
        }
        let fence = self.next_fence(backend)?;
        self.fence = fence;
        self.entries.retain(|e| !(e.owner == ask.owner && e.role == Role::Intent));
        if let Mode::Permit { limit } = ask.mode {
            self.limit = limit;
        }
        self.entries.push(Entry { owner: ask.owner, fence, expires: ask.expires, role });
        Ok(Admit::Granted(fence))
    }

    /// The token the next new grant gets.
    ///
    /// # Errors
    /// The fencing counter is exhausted (after 2^64 - 1 grants).
    pub(crate) fn next_fence(&self, backend: &'static str) -> Result<u64> {
        self.fence.checked_add(1).ok_or_else(|| {
            Error::backend_msg(backend, lock_core::BackendErrorKind::Other, "fencing counter exhausted")
        })
    }

    fn set_intent(&mut self, ask: &Ask<T>, until: T) {
        let room = self.entries.len() < ask.capacity;
        match self.entries.iter_mut().find(|e| e.owner == ask.owner && e.role == Role::Intent) {
            Some(e) => e.expires = until,
            None if room => {
                self.entries.push(Entry { owner: ask.owner, fence: 0, expires: until, role: Role::Intent });
            }
            None => {} // no room: this writer waits without blocking readers
        }
    }

    /// Extends `owner`'s unexpired grant in `role` to `expires`; `false` when it is gone.
    pub(crate) fn extend(&mut self, owner: OwnerToken, role: Role, now: T, expires: T) -> bool {
        match self.entries.iter_mut().find(|e| e.owner == owner && e.role == role && e.expires > now) {
            Some(e) => {
                e.expires = expires;
                true
            }
            None => false,
        }
    }

    /// Removes `owner`'s grant in `role` (and, for a writer, its intent). Returns whether an
    /// unexpired grant was removed, and whether anything was.
    pub(crate) fn release(&mut self, owner: OwnerToken, role: Role, now: T) -> (bool, bool) {
        let live = self.entries.iter().any(|e| e.owner == owner && e.role == role && e.expires > now);
        let before = self.entries.len();
        self.entries.retain(|e| {
            !(e.owner == owner && (e.role == role || (role == Role::Writer && e.role == Role::Intent)))
        });
        (live, self.entries.len() != before)
    }

    /// Raises the fencing counter so that the next grant's token is above `at_least` (never
    /// lowers it); returns the counter after.
    pub(crate) fn raise(&mut self, at_least: u64) -> u64 {
        self.fence = self.fence.max(at_least);
        self.fence
    }

    /// Whether `owner` holds an unexpired grant in `role` at `now`.
    pub(crate) fn holds(&self, owner: OwnerToken, role: Role, now: T) -> bool {
        self.entries.iter().any(|e| e.owner == owner && e.role == role && e.expires > now)
    }

    /// Removes `owner`'s intent only (a waiting writer that gave up); whether there was one.
    pub(crate) fn withdraw_intent(&mut self, owner: OwnerToken) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !(e.owner == owner && e.role == Role::Intent));
        self.entries.len() != before
    }

    /// The unexpired grants at `now` (intents excluded), with their modes.
    pub(crate) fn holders(&self, now: T) -> impl Iterator<Item = (&Entry<T>, Mode)> {
        let limit = self.limit;
        self.entries
            .iter()
            .filter(move |e| e.role != Role::Intent && e.expires > now)
            .map(move |e| (e, e.role.mode(limit)))
    }
}

/// Refuses a raise to `u64::MAX`: no later token could be greater, and every grant of the key
/// would fail for good.
///
/// # Errors
/// [`Error::Unsupported`].
pub(crate) fn raisable(backend: &'static str, at_least: u64) -> lock_core::Result<()> {
    if at_least == u64::MAX {
        return Err(Error::Unsupported {
            backend,
            capability: "a fencing counter raised to u64::MAX".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "test";

    fn ask(owner: u128, mode: Mode, now: u64) -> Ask<u64> {
        Ask { owner: OwnerToken::from_u128(owner), mode, now, expires: now + 100, intent: None, capacity: 64 }
    }

    fn granted(t: &mut Table<u64>, a: Ask<u64>) -> u64 {
        match t.acquire(&a, B).expect("acquire") {
            Admit::Granted(f) => f,
            other => panic!("{a:?} refused: {other:?}"),
        }
    }

    #[test]
    fn a_semaphore_admits_n_and_refuses_another_n() {
        let mut t = Table::default();
        let p = Mode::Permit { limit: 2 };
        assert_eq!(granted(&mut t, ask(1, p, 0)), 1);
        assert_eq!(granted(&mut t, ask(2, p, 1)), 2);
        assert_eq!(t.acquire(&ask(3, p, 2), B).expect("acquire"), Admit::Held(Some(100)));
        assert_eq!(t.acquire(&ask(3, Mode::Permit { limit: 3 }, 2), B).expect("acquire"), Admit::Mismatch(2));
        // A retried request gets its grant back; an expired permit frees its place.
        assert_eq!(granted(&mut t, ask(2, p, 3)), 2);
        assert_eq!(granted(&mut t, ask(3, p, 100)), 3);
        // With every holder gone, a new number of permits is taken up.
        let (live, _) = t.release(OwnerToken::from_u128(3), Role::Permit, 101);
        assert!(live);
        assert_eq!(granted(&mut t, ask(4, Mode::Permit { limit: 5 }, 200)), 4);
        assert_eq!(t.limit, 5);
    }

    #[test]
    fn readers_share_a_writer_excludes_and_a_waiting_writer_blocks_new_readers() {
        let mut t = Table::default();
        let r1 = granted(&mut t, ask(1, Mode::Read, 0));
        let r2 = granted(&mut t, ask(2, Mode::Read, 0));
        let mut w = ask(3, Mode::Write, 1);
        w.intent = Some(50);
        assert_eq!(t.acquire(&w, B).expect("acquire"), Admit::Held(Some(100)));
        assert!(matches!(t.acquire(&ask(4, Mode::Read, 2), B).expect("acquire"), Admit::Held(Some(50))));
        // The intent expires unless refreshed: a writer that vanished does not block forever.
        assert_eq!(granted(&mut t, ask(4, Mode::Read, 50)), 3);
        w.now = 55;
        w.intent = Some(200);
        assert_eq!(t.acquire(&w, B).expect("acquire"), Admit::Held(Some(100)));
        for o in [1, 2, 4] {
            t.release(OwnerToken::from_u128(o), Role::Reader, 60);
        }
        let wt = granted(&mut t, ask(3, Mode::Write, 61));
        assert!(wt > r1.max(r2));
        assert!(!t.entries.iter().any(|e| e.role == Role::Intent), "the granted writer's intent stayed");
        assert!(matches!(t.acquire(&ask(5, Mode::Read, 62), B).expect("acquire"), Admit::Held(_)));
        assert!(matches!(t.acquire(&ask(6, Mode::Write, 62), B).expect("acquire"), Admit::Held(_)));
    }

    #[test]
    fn extend_never_revives_and_release_reports_the_truth() {
        let mut t = Table::default();
        granted(&mut t, ask(1, Mode::Exclusive, 0));
        let owner = OwnerToken::from_u128(1);
        assert!(t.extend(owner, Role::Lock, 50, 150));
        assert!(!t.extend(owner, Role::Lock, 150, 250), "an expired grant was revived");
        assert_eq!(t.release(owner, Role::Lock, 150), (false, true));
        assert_eq!(t.release(owner, Role::Lock, 150), (false, false));
    }

    #[test]
    fn a_full_table_refuses_instead_of_growing() {
        let mut t = Table::default();
        for o in 0..4 {
            let mut a = ask(o, Mode::Read, 0);
            a.capacity = 4;
            granted(&mut t, a);
        }
        let mut a = ask(9, Mode::Read, 0);
        a.capacity = 4;
        assert_eq!(t.acquire(&a, B).expect("acquire"), Admit::Held(Some(100)));
        assert_eq!(t.entries.len(), 4);
    }
}
