//! Decoding lists with room for the next event.
//!
//! A profile decoded from its stored form gets its lists at exactly their
//! length, and the next touchpoint then pushes onto the recent touches, the
//! remembered event ids and a window series: each push reallocated and copied
//! its list (about 5% of the engine threads' samples under `-- guarantees`,
//! where a third of the profiles come from the encoded cache). These decode
//! such a list with a few spare places instead; the stored bytes are the same.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

/// Spare places a list is decoded with (most profiles take one or two events
/// before they leave memory again).
pub const ROOM: usize = 2;

/// A list that can be decoded with spare places.
pub trait Roomy {
    /// What the list holds.
    type Item;
    /// An empty list with room for `capacity` items.
    fn with_capacity(capacity: usize) -> Self;
    /// Appends `item`.
    fn push(&mut self, item: Self::Item);
}

impl<T> Roomy for Vec<T> {
    type Item = T;
    fn with_capacity(capacity: usize) -> Self {
        Vec::with_capacity(capacity)
    }
    fn push(&mut self, item: T) {
        Vec::push(self, item);
    }
}

impl<T> Roomy for std::collections::VecDeque<T> {
    type Item = T;
    fn with_capacity(capacity: usize) -> Self {
        std::collections::VecDeque::with_capacity(capacity)
    }
    fn push(&mut self, item: T) {
        self.push_back(item);
    }
}

/// Decodes a sequence of `E` into `C`, each element mapped by `map`, with
/// room for `capacity(len)` items where the format says the length (postcard
/// always does); `capacity` is never asked for less than the length.
pub fn decode_seq<'de, D, E, C>(
    d: D,
    capacity: impl Fn(usize) -> usize,
    map: impl FnMut(E) -> C::Item,
) -> Result<C, D::Error>
where
    D: Deserializer<'de>,
    E: Deserialize<'de>,
    C: Roomy,
{
    struct Seq<E, C, F, M> {
        capacity: F,
        map: M,
        _types: PhantomData<fn(E) -> C>,
    }

    impl<'de, E, C, F, M> Visitor<'de> for Seq<E, C, F, M>
    where
        E: Deserialize<'de>,
        C: Roomy,
        F: Fn(usize) -> usize,
        M: FnMut(E) -> C::Item,
    {
        type Value = C;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<C, A::Error> {
            // A length from the input is trusted only as far as a sane bound
            // (postcard already offers none longer than the bytes left), so a
            // corrupt record cannot make the decoder reserve gigabytes.
            let len = seq.size_hint().unwrap_or(0).min(4096);
            let mut out = C::with_capacity((self.capacity)(len).max(len));
            while let Some(e) = seq.next_element::<E>()? {
                out.push((self.map)(e));
            }
            Ok(out)
        }
    }

    d.deserialize_seq(Seq {
        capacity,
        map,
        _types: PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(deserialize_with = "roomy_ids")]
        ids: VecDeque<u64>,
    }

    fn roomy_ids<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<u64>, D::Error> {
        decode_seq(d, |len| len + ROOM, |x: u64| x)
    }

    #[test]
    fn a_list_decodes_to_the_same_items_with_room_for_more() {
        let h = Holder {
            ids: (1..=5).collect(),
        };
        let bytes = postcard::to_allocvec(&h).unwrap();
        let back: Holder = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
        assert!(back.ids.capacity() >= 5 + ROOM, "{}", back.ids.capacity());
        // The bytes are what a plain list would have been.
        assert_eq!(
            bytes,
            postcard::to_allocvec(&vec![1u64, 2, 3, 4, 5]).unwrap()
        );
    }

    #[test]
    fn a_decoded_profile_takes_its_next_touchpoint_without_growing_its_lists() {
        use crate::seen::SeenLimits;
        use crate::testing::tp;
        use crate::{Channel, EventType, Profile};

        const T0: i64 = 1_764_000_000_000;
        let mut p = Profile::new("c1");
        let limits = SeenLimits::default();
        for i in 0..3 {
            let t = tp(
                &format!("e{i}"),
                "c1",
                Channel::Web,
                EventType::PageView,
                T0 + i * 120_000,
            );
            assert!(p.admit(&t, &limits));
            p.apply(&t);
        }
        let mut back = Profile::decode(&p.encode()).unwrap();
        assert_eq!(back, p);
        let room = |p: &Profile| {
            (
                p.recent.capacity(),
                p.seen_events.capacity(),
                p.windows.series[0].buckets.capacity(),
            )
        };
        let before = room(&back);
        // Two minutes later: a new window bucket, a new remembered id and a new recent touch.
        let t = tp(
            "e3",
            "c1",
            Channel::Web,
            EventType::PageView,
            T0 + 3 * 120_000,
        );
        assert!(back.admit(&t, &limits));
        back.apply(&t);
        assert_eq!(back.recent.len(), 4);
        assert_eq!(back.seen_events.len(), 4);
        assert_eq!(back.windows.series[0].buckets.len(), 4);
        assert_eq!(room(&back), before, "a list grew (recent, ids, buckets)");
    }
}
