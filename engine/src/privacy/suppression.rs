//! The suppression list: keyed hashes of erased ids, per partition, checked for
//! every touchpoint so that replayed input cannot bring an erased customer back.
//!
//! Stored in RocksDB (one key per hash) and in the changelog under
//! [`changelog_key`], so it survives a restore and moves with its partition.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA-256 of an id.
pub type IdHash = [u8; 32];

/// Changelog keys of suppression entries start with this.
pub const CHANGELOG_PREFIX: &[u8] = b"\0rapport.erased.";

/// Hashes ids with the deployment's key (see `PrivacyConfig::hasher`).
#[derive(Clone)]
pub struct IdHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdHasher(..)")
    }
}

impl IdHasher {
    /// A hasher keyed by `key`.
    pub fn new(key: &[u8]) -> IdHasher {
        // HMAC takes keys of any length.
        let mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        IdHasher { mac }
    }

    /// The keyed hash of `id` (no allocation: the keyed state is cloned on the stack).
    pub fn hash(&self, id: &str) -> IdHash {
        let mut m = self.mac.clone();
        m.update(id.as_bytes());
        m.finalize().into_bytes().into()
    }
}

/// Lower-case hex of a hash, as receipts show it.
pub fn hex(h: &IdHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The changelog key of the suppression entry for `h`.
pub fn changelog_key(h: &IdHash) -> Vec<u8> {
    [CHANGELOG_PREFIX, h.as_slice()].concat()
}

/// The hash a changelog key names, if it is a suppression entry's key.
pub fn from_changelog_key(key: &[u8]) -> Option<IdHash> {
    key.strip_prefix(CHANGELOG_PREFIX)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_stable() {
        let a = IdHasher::new(b"k1");
        assert_eq!(a.hash("c-1"), a.hash("c-1"));
        assert_ne!(a.hash("c-1"), a.hash("c-2"));
        assert_ne!(a.hash("c-1"), IdHasher::new(b"k2").hash("c-1"));
        // RFC 4231 test case 2.
        let h = IdHasher::new(b"Jefe").hash("what do ya want for nothing?");
        assert_eq!(
            hex(&h),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn changelog_keys_round_trip() {
        let h = IdHasher::new(b"k").hash("c-1");
        assert_eq!(from_changelog_key(&changelog_key(&h)), Some(h));
        assert_eq!(from_changelog_key(b"c-1"), None);
        assert_eq!(from_changelog_key(b"\0rapport.erased.short"), None);
    }
}
