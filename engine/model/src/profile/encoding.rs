//! How a profile is stored: a version byte, then its postcard body, and the
//! older versions' layouts, read and converted so that state written by one
//! Rapport stays readable by the next.

use serde::Deserialize;

use super::*;
use crate::seen::SeenEventsV4;
use crate::window::WindowsV4;

/// The state-encoding version written by this build. Readers accept every version up
/// to this one, so state written by version N stays readable by N+1.
///
/// Version 2 appended `windows`, `journey_runs` and `journey_entries`; version 3
/// appended `review_reads_ms`, `call_waits`, `sentiment_ms`, `emotion` and
/// `delivery`; version 4 appended `seen_events`; version 5 stores window
/// buckets and remembered event ids packed (see `window::packed` and
/// [`SeenEvents`]'s encoding), a third smaller for a busy customer.
/// Postcard is not self-describing: a struct with more fields cannot read a
/// shorter record, so older bodies are read as [`ProfileV1`] or [`ProfileV2`]
/// and converted.
pub const PROFILE_ENCODING_VERSION: u8 = 5;

/// The profile as encoding version 1 wrote it: the fields of [`Profile`] before
/// `windows`. Only ever decoded.
#[derive(Deserialize)]
struct ProfileV1 {
    id: String,
    anonymous_ids: Vec<String>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    events: u64,
    channels: [ChannelActivity; 7],
    orders: u32,
    lifetime_value: f64,
    returns: u32,
    last_purchase_ms: i64,
    nps: Option<Score>,
    csat: Option<Score>,
    ces: Option<Score>,
    open_issues: u32,
    sentiment: f64,
    contacts_ms: Vec<i64>,
    max_wait_seconds: i32,
    products: Vec<ProductInterest>,
    recent: VecDeque<RecentTouch>,
    journeys: Vec<JourneyMark>,
    timers: Vec<Timer>,
}

impl From<ProfileV1> for Profile {
    fn from(v: ProfileV1) -> Self {
        upgraded(Profile {
            id: v.id,
            anonymous_ids: v.anonymous_ids,
            first_seen_ms: v.first_seen_ms,
            last_seen_ms: v.last_seen_ms,
            events: v.events,
            channels: v.channels,
            orders: v.orders,
            lifetime_value: v.lifetime_value,
            returns: v.returns,
            last_purchase_ms: v.last_purchase_ms,
            nps: v.nps,
            csat: v.csat,
            ces: v.ces,
            open_issues: v.open_issues,
            sentiment: v.sentiment,
            contacts_ms: v.contacts_ms,
            max_wait_seconds: v.max_wait_seconds,
            products: v.products,
            recent: v.recent,
            journeys: v.journeys,
            timers: v.timers,
            ..Default::default()
        })
    }
}

/// The profile as encoding version 2 wrote it: the version-1 fields, then
/// `windows`, `journey_runs` and `journey_entries`. Postcard writes a struct as
/// its fields one after the other, without framing, so the nested version-1
/// fields read exactly as they were written. Only ever decoded.
#[derive(Deserialize)]
struct ProfileV2 {
    v1: ProfileV1,
    windows: WindowsV4,
    journey_runs: Vec<JourneyRun>,
    journey_entries: Vec<JourneyEntries>,
}

impl From<ProfileV2> for Profile {
    fn from(v: ProfileV2) -> Self {
        Profile {
            windows: v.windows.into(),
            journey_runs: v.journey_runs,
            journey_entries: v.journey_entries,
            ..Profile::from(v.v1)
        }
    }
}

/// The profile as encoding version 3 wrote it: the version-2 fields, then the
/// emotional signals, delivery state and survey trend. Only ever decoded.
#[derive(Deserialize)]
struct ProfileV3 {
    v2: ProfileV2,
    review_reads_ms: Vec<i64>,
    call_waits: Vec<CallWait>,
    sentiment_ms: i64,
    emotion: EmotionTrack,
    delivery: DeliveryState,
    previous_surveys: [Option<Score>; 3],
}

impl From<ProfileV3> for Profile {
    fn from(v: ProfileV3) -> Self {
        Profile {
            review_reads_ms: v.review_reads_ms,
            call_waits: v.call_waits,
            sentiment_ms: v.sentiment_ms,
            emotion: v.emotion,
            delivery: v.delivery,
            previous_surveys: v.previous_surveys,
            ..Profile::from(v.v2)
        }
    }
}

/// The profile as encoding version 4 wrote it: the version-3 fields, then the
/// remembered event ids (windows and ids not packed yet). Only ever decoded.
#[derive(Deserialize)]
struct ProfileV4 {
    v3: ProfileV3,
    seen_events: SeenEventsV4,
}

impl From<ProfileV4> for Profile {
    fn from(v: ProfileV4) -> Self {
        Profile {
            seen_events: v.seen_events.into(),
            ..Profile::from(v.v3)
        }
    }
}

/// Fills in what a profile written before version 3 can tell about the fields
/// it lacks: a non-zero sentiment trend dates from the latest chat touchpoint.
/// The emotional state starts `neutral` and is set by the next evaluation.
fn upgraded(mut p: Profile) -> Profile {
    if p.sentiment != 0.0 {
        p.sentiment_ms = p.channels[Channel::Chat.index()].last_ms;
    }
    p
}

/// A stored profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are empty.
    #[error("empty profile record")]
    Empty,
    /// Written by a newer Rapport than this one.
    #[error("profile encoding version {0} is newer than this build understands ({PROFILE_ENCODING_VERSION})")]
    UnknownVersion(u8),
    /// Corrupt body.
    #[error("corrupt profile record: {0}")]
    Corrupt(#[from] postcard::Error),
}

impl Profile {
    /// Encodes the profile for storage: a version byte, then the postcard body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`Profile::encode`], appended to `out`: a commit encodes thousands of
    /// profiles, each into its record's one buffer, without an intermediate copy.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(PROFILE_ENCODING_VERSION);
        // Serialising plain owned data to a Vec cannot fail.
        let _ = postcard::serialize_with_flavor(self, Append(out));
    }

    /// Decodes a stored profile.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            None => Err(DecodeError::Empty),
            Some((&PROFILE_ENCODING_VERSION, body)) => Ok(postcard::from_bytes(body)?),
            Some((&4, body)) => Ok(postcard::from_bytes::<ProfileV4>(body)?.into()),
            Some((&3, body)) => Ok(postcard::from_bytes::<ProfileV3>(body)?.into()),
            Some((&2, body)) => Ok(postcard::from_bytes::<ProfileV2>(body)?.into()),
            Some((&1, body)) => Ok(postcard::from_bytes::<ProfileV1>(body)?.into()),
            Some((&v, _)) => Err(DecodeError::UnknownVersion(v)),
        }
    }
}

/// Decodes the recent touchpoints with room for the next one.
///
/// A profile is mostly decoded to take a touchpoint, and a list decoded to
/// its exact length grows for it: a new allocation, a copy, a free, for a
/// list of fewer than [`RECENT_TOUCHPOINTS`] (which a customer's first ten
/// touchpoints are). Only the encoding version 5 reads this way; the
/// older ones read as before.
pub(super) fn recent_with_room<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<VecDeque<RecentTouch>, D::Error> {
    d.deserialize_seq(WithRoom::new(RECENT_TOUCHPOINTS, |t: RecentTouch| t))
}

/// Reads a sequence of `T` into a [`VecDeque`] of `U` (each item through
/// `map`) with capacity for one more item, up to `room` in all.
pub(crate) struct WithRoom<T, F> {
    room: usize,
    map: F,
    item: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> WithRoom<T, F> {
    /// Room for `room` items at most; `map` makes each one.
    pub(crate) fn new(room: usize, map: F) -> Self {
        WithRoom {
            room,
            map,
            item: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>, U, F: FnMut(T) -> U> serde::de::Visitor<'de> for WithRoom<T, F> {
    type Value = VecDeque<U>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        mut self,
        mut seq: A,
    ) -> Result<Self::Value, A::Error> {
        // The stored length is trusted no further than the room.
        let len = seq.size_hint().unwrap_or(0).min(self.room);
        let mut items = VecDeque::with_capacity((len + 1).min(self.room).max(len));
        while let Some(item) = seq.next_element()? {
            items.push_back((self.map)(item));
        }
        Ok(items)
    }
}

/// The longest piece of output [`Append`] copies byte by byte.
const SHORT: usize = 16;

/// A postcard output that appends to a borrowed `Vec`.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most of a profile goes out as varints and short strings of a few
        // bytes each; copied byte by byte they stay inline, where a call to
        // `memcpy` for each took a third of encoding's time.
        if data.len() <= SHORT {
            self.0.reserve(SHORT);
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}
