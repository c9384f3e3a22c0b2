//! Per-connection state.

use std::collections::BTreeMap;

use crate::Conn;

/// State kept per connection, keyed by [`Conn`].
///
/// Iterates in id order, which is accept order because the host never reuses ids; so
/// a broadcast reaches clients in the order they joined. A `BTreeMap` underneath rather
/// than a `HashMap`: no random seed, so a plugin needs no `wasi:random` for it.
///
/// ```
/// use sandport_guest::{Conn, ConnMap};
///
/// let mut names = ConnMap::new();
/// names.insert(Conn::from_id(2), "bob");
/// names.insert(Conn::from_id(1), "alice");
/// assert_eq!(names.get(Conn::from_id(2)), Some(&"bob"));
/// let order: Vec<u64> = names.ids().map(|c| c.id()).collect();
/// assert_eq!(order, [1, 2]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnMap<T> {
    entries: BTreeMap<Conn, T>,
}

impl<T> ConnMap<T> {
    /// An empty map; `const`, so it can sit in a `static` or a `Default` handler.
    ///
    /// ```
    /// let map: sandport_guest::ConnMap<u32> = sandport_guest::ConnMap::new();
    /// assert!(map.is_empty());
    /// ```
    pub const fn new() -> Self {
        ConnMap { entries: BTreeMap::new() }
    }

    /// Store `value` for `conn`; returns the value it replaces, if any.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// assert_eq!(m.insert(Conn::from_id(1), 'a'), None);
    /// assert_eq!(m.insert(Conn::from_id(1), 'b'), Some('a'));
    /// ```
    pub fn insert(&mut self, conn: Conn, value: T) -> Option<T> {
        self.entries.insert(conn, value)
    }

    /// The value for `conn`.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// m.insert(Conn::from_id(1), 10);
    /// assert_eq!(m.get(Conn::from_id(1)), Some(&10));
    /// assert_eq!(m.get(Conn::from_id(2)), None);
    /// ```
    pub fn get(&self, conn: Conn) -> Option<&T> {
        self.entries.get(&conn)
    }

    /// The value for `conn`, mutably.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// m.insert(Conn::from_id(1), 10);
    /// *m.get_mut(Conn::from_id(1)).unwrap() += 1;
    /// assert_eq!(m.get(Conn::from_id(1)), Some(&11));
    /// ```
    pub fn get_mut(&mut self, conn: Conn) -> Option<&mut T> {
        self.entries.get_mut(&conn)
    }

    /// The value for `conn`, inserting `make()` first if there is none.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut bytes_seen: ConnMap<u64> = ConnMap::new();
    /// *bytes_seen.get_or_insert_with(Conn::from_id(1), || 0) += 5;
    /// assert_eq!(bytes_seen.get(Conn::from_id(1)), Some(&5));
    /// ```
    pub fn get_or_insert_with(&mut self, conn: Conn, make: impl FnOnce() -> T) -> &mut T {
        self.entries.entry(conn).or_insert_with(make)
    }

    /// Remove and return the value for `conn`, typically in `on_close`.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// m.insert(Conn::from_id(1), "x");
    /// assert_eq!(m.remove(Conn::from_id(1)), Some("x"));
    /// assert_eq!(m.remove(Conn::from_id(1)), None);
    /// ```
    pub fn remove(&mut self, conn: Conn) -> Option<T> {
        self.entries.remove(&conn)
    }

    /// Whether `conn` has a value.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// m.insert(Conn::from_id(1), ());
    /// assert!(m.contains(Conn::from_id(1)));
    /// ```
    pub fn contains(&self, conn: Conn) -> bool {
        self.entries.contains_key(&conn)
    }

    /// How many connections have a value.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// m.insert(Conn::from_id(1), ());
    /// assert_eq!(m.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no connection has a value.
    ///
    /// ```
    /// # use sandport_guest::ConnMap;
    /// assert!(ConnMap::<()>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Connections and their values, in id order.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// m.insert(Conn::from_id(1), 3);
    /// m.insert(Conn::from_id(2), 4);
    /// let total: i32 = m.iter().map(|(_, v)| v).sum();
    /// assert_eq!(total, 7);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (Conn, &T)> {
        self.entries.iter().map(|(&conn, value)| (conn, value))
    }

    /// Connections and their values, mutably, in id order.
    ///
    /// ```
    /// # use sandport_guest::{Conn, ConnMap};
    /// let mut m = ConnMap::new();
    /// m.insert(Conn::from_id(1), 3);
    /// for (_, v) in m.iter_mut() {
    ///     *v = 0;
    /// }
    /// assert_eq!(m.get(Conn::from_id(1)), Some(&0));
    /// ```
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Conn, &mut T)> {
        self.entries.iter_mut().map(|(&conn, value)| (conn, value))
    }

    /// The connections, in id order: e.g. the recipients of a broadcast.
    ///
    /// ```no_run
    /// # use sandport_guest::{Conn, ConnMap};
    /// # let room: ConnMap<()> = ConnMap::new();
    /// # let sender = Conn::from_id(1);
    /// for peer in room.ids().filter(|&c| c != sender) {
    ///     let _ = peer.send(b"someone spoke\n");
    /// }
    /// ```
    pub fn ids(&self) -> impl Iterator<Item = Conn> + '_ {
        self.entries.keys().copied()
    }
}

impl<T> Default for ConnMap<T> {
    fn default() -> Self {
        ConnMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_value_per_connection_in_id_order() {
        let mut m = ConnMap::default();
        for id in [5, 1, 3] {
            m.insert(Conn::from_id(id), id * 10);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.ids().map(Conn::id).collect::<Vec<_>>(), [1, 3, 5]);
        for (conn, v) in m.iter_mut() {
            *v += conn.id();
        }
        assert_eq!(m.iter().map(|(_, &v)| v).collect::<Vec<_>>(), [11, 33, 55]);
        assert_eq!(m.remove(Conn::from_id(3)), Some(33));
        assert!(!m.contains(Conn::from_id(3)));
        assert_eq!(*m.get_or_insert_with(Conn::from_id(3), || 7), 7);
        assert_eq!(*m.get_or_insert_with(Conn::from_id(3), || 8), 7);
    }
}
