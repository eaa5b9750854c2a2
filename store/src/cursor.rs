//! Positions in the global log.

use std::fmt;
use std::str::FromStr;

/// A place in the global log: every event after it is still to be read.
///
/// Clients treat the string form as opaque. Inside, it is the (transaction id, position) pair that orders
/// PostgreSQL events; SQLite has no transaction ids and uses position alone (transaction 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub(crate) txid: u64,
    pub(crate) position: i64,
}

/// A string that is not a cursor this service issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid log cursor")]
pub struct InvalidCursor;

impl Cursor {
    /// Before the first event.
    pub const START: Cursor = Cursor { txid: 0, position: 0 };

    pub(crate) fn new(txid: u64, position: i64) -> Self {
        Self { txid, position }
    }

    /// The event's unique position (assigned when it was written; not dense, and on PostgreSQL not in read order).
    pub fn position(&self) -> i64 {
        self.position
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g1.{}.{}", self.txid, self.position)
    }
}

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut parts = raw.split('.');
        let (Some("g1"), Some(txid), Some(position), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidCursor);
        };
        let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(txid) || !digits(position) {
            return Err(InvalidCursor);
        }
        let txid = txid.parse().map_err(|_| InvalidCursor)?;
        let position: i64 = position.parse().map_err(|_| InvalidCursor)?;
        Ok(Cursor { txid, position })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_their_string_form() {
        let cursor = Cursor::new(912, 77);
        assert_eq!(cursor.to_string(), "g1.912.77");
        assert_eq!("g1.912.77".parse::<Cursor>(), Ok(cursor));
        assert_eq!(Cursor::START.to_string().parse::<Cursor>(), Ok(Cursor::START));
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for raw in
            ["", "g1", "g1.1", "g2.1.1", "g1.-1.1", "g1.1.x", "g1.1.1.1", "g1.99999999999999999999999.1", "g1.1.+1"]
        {
            assert_eq!(raw.parse::<Cursor>(), Err(InvalidCursor), "{raw}");
        }
    }

    #[test]
    fn cursors_order_by_transaction_then_position() {
        assert!(Cursor::new(1, 50) < Cursor::new(2, 3));
        assert!(Cursor::new(2, 3) < Cursor::new(2, 4));
    }
}
