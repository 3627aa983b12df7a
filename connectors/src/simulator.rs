//! A deterministic population of simulated customers on four channels plus surveys.
//!
//! Each customer follows a persona (hesitating shopper, happy buyer, unlucky buyer
//! whose delivery fails, anxious help-seeker, casual browser) so the demo and the
//! tests see every journey fire for the right people, and only for them.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rapport_model::testing::tp;
use rapport_model::touchpoint::{Call, CallOutcome, Chat, Web};
use rapport_model::{Channel, EventType, SurveyKind, Touchpoint};

/// How a simulated customer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persona {
    /// Views the same product again and again without buying.
    Hesitating,
    /// Browses, buys, gets the delivery, answers a good survey.
    HappyBuyer,
    /// Buys, the delivery fails, calls and chats, answers as a detractor.
    Unlucky,
    /// Searches help repeatedly, waits long on the phone.
    Anxious,
    /// Looks around at random.
    Browser,
}

impl Persona {
    fn of(i: u64) -> Persona {
        match i % 20 {
            0..=2 => Persona::Hesitating,
            3..=7 => Persona::HappyBuyer,
            8..=9 => Persona::Unlucky,
            10..=11 => Persona::Anxious,
            _ => Persona::Browser,
        }
    }

    /// Length of one cycle of this persona's behaviour.
    fn cycle(self) -> u32 {
        match self {
            Persona::Hesitating => 5,
            Persona::HappyBuyer => 6,
            Persona::Unlucky => 7,
            Persona::Anxious => 5,
            Persona::Browser => 4,
        }
    }
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of customers.
    pub customers: u64,
    /// Random seed; the same seed gives the same records.
    pub seed: u64,
    /// Malformed records per thousand (they must land in the dead-letter topic).
    pub malformed_per_mille: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            customers: 5_000,
            seed: 7,
            malformed_per_mille: 2,
        }
    }
}

/// One record to write: key (customer id) and value bytes.
#[derive(Debug, Clone)]
pub struct SimRecord {
    /// Customer id (the partitioning key).
    pub key: String,
    /// JSON touchpoint, or deliberately malformed bytes.
    pub value: Vec<u8>,
    /// Whether the value is deliberately malformed.
    pub malformed: bool,
}

/// The simulated population.
pub struct Simulator {
    cfg: SimConfig,
    rng: SmallRng,
    steps: Vec<u32>,
    seq: u64,
}

const SKUS: [&str; 12] = [
    "tv-55-oled",
    "phone-x2",
    "laptop-14",
    "headphones-nc",
    "coffee-maker",
    "vacuum-robot",
    "watch-fit",
    "tablet-11",
    "camera-mirrorless",
    "speaker-home",
    "blender-pro",
    "ebike-city",
];

impl Simulator {
    /// A population of `cfg.customers` customers.
    pub fn new(cfg: SimConfig) -> Self {
        let rng = SmallRng::seed_from_u64(cfg.seed);
        let steps = vec![0; cfg.customers as usize];
        Simulator {
            cfg,
            rng,
            steps,
            seq: 0,
        }
    }

    /// The persona of customer number `i`.
    pub fn persona(i: u64) -> Persona {
        Persona::of(i)
    }

    /// The customer id of customer number `i`.
    pub fn customer_id(i: u64) -> String {
        format!("c-{i:06}")
    }

    /// The next record, with event time `now_ms`.
    pub fn next_record(&mut self, now_ms: i64) -> SimRecord {
        let i = self.rng.random_range(0..self.cfg.customers.max(1));
        let customer = Self::customer_id(i);
        self.seq += 1;
        if self.rng.random_range(0..1000) < self.cfg.malformed_per_mille {
            return SimRecord {
                value: self.malformed(&customer, now_ms),
                key: customer,
                malformed: true,
            };
        }
        let step = self.steps[i as usize];
        let persona = Persona::of(i);
        self.steps[i as usize] = (step + 1) % persona.cycle();
        let event_id = format!("evt-{:x}-{}", self.cfg.seed, self.seq);
        let t = self.touchpoint(persona, i, step, &event_id, &customer, now_ms);
        SimRecord {
            key: customer,
            value: serde_json::to_vec(&t).unwrap_or_default(),
            malformed: false,
        }
    }

    fn touchpoint(
        &mut self,
        persona: Persona,
        i: u64,
        step: u32,
        id: &str,
        c: &str,
        now: i64,
    ) -> Touchpoint {
        // Each customer has a favourite product, so hesitation is about one thing.
        let d = Draft {
            id,
            c,
            now,
            fav: SKUS[(i as usize * 7) % SKUS.len()],
            any: SKUS[self.rng.random_range(0..SKUS.len())],
            order: format!("o-{i}"),
            store: format!("store-{:02}", i % 17),
        };
        match persona {
            Persona::Hesitating => d.hesitating(step),
            Persona::HappyBuyer => self.happy_buyer(d, step),
            Persona::Unlucky => self.unlucky(d, step),
            Persona::Anxious => self.anxious(d, step),
            Persona::Browser => d.browser(step),
        }
    }

    /// Buys, gets the parcel, and is asked: CSAT, then NPS.
    fn happy_buyer(&mut self, d: Draft<'_>, step: u32) -> Touchpoint {
        let Draft {
            id, c, now, any, ..
        } = d;
        match step {
            0 => tp(id, c, Channel::Web, EventType::ProductView, now).with_sku(any),
            1 => tp(id, c, Channel::App, EventType::AddToCart, now).with_sku(any),
            2 => {
                let mut t = tp(id, c, Channel::Store, EventType::Purchase, now)
                    .with_sku(any)
                    .with_amount(f64::from(self.rng.random_range(20..900)))
                    .with_order(&d.order);
                t.store_id = Some(d.store);
                t
            }
            3 => tp(id, c, Channel::System, EventType::Delivered, now).with_order(&d.order),
            4 => {
                let score = self.rng.random_range(4..=5);
                tp(id, c, Channel::Email, EventType::SurveyResponse, now)
                    .with_survey(SurveyKind::Csat, score)
            }
            _ => {
                let score = self.rng.random_range(8..=10);
                tp(id, c, Channel::Email, EventType::SurveyResponse, now)
                    .with_survey(SurveyKind::Nps, score)
            }
        }
    }

    /// Buys, the delivery fails, calls and chats in vain, and detracts.
    fn unlucky(&mut self, d: Draft<'_>, step: u32) -> Touchpoint {
        let Draft {
            id, c, now, any, ..
        } = d;
        match step {
            0 => tp(id, c, Channel::Web, EventType::Purchase, now)
                .with_sku(any)
                .with_amount(f64::from(self.rng.random_range(20..400)))
                .with_order(&d.order),
            1 => tp(id, c, Channel::System, EventType::DeliveryFailed, now).with_order(&d.order),
            2 => tp(id, c, Channel::CallCenter, EventType::CallStarted, now),
            3 => {
                let mut t = tp(id, c, Channel::CallCenter, EventType::CallEnded, now);
                t.call = Some(Call {
                    wait_seconds: Some(self.rng.random_range(120..1500)),
                    duration_seconds: Some(self.rng.random_range(60..900)),
                    transfers: Some(self.rng.random_range(0..3)),
                    outcome: Some(CallOutcome::Unresolved),
                    agent_notes: Some("parcel lost, customer upset".into()),
                });
                t
            }
            4 => {
                let mut t = tp(id, c, Channel::Chat, EventType::ChatMessage, now);
                t.chat = Some(Chat {
                    text: Some("Still no parcel. This is the third time I ask.".into()),
                    sentiment: Some(-0.8),
                    from_bot: Some(false),
                });
                t
            }
            5 => {
                let score = self.rng.random_range(0..=4);
                tp(id, c, Channel::Email, EventType::SurveyResponse, now)
                    .with_survey(SurveyKind::Nps, score)
            }
            _ => tp(id, c, Channel::System, EventType::TicketOpened, now),
        }
    }

    /// Searches for help, is handed over from the bot, and waits on the phone.
    fn anxious(&mut self, d: Draft<'_>, step: u32) -> Touchpoint {
        let Draft { id, c, now, .. } = d;
        match step {
            0..=2 => {
                let mut t = tp(id, c, Channel::Web, EventType::HelpSearch, now);
                t.web = Some(Web {
                    url: None,
                    query: Some("how to change delivery address".into()),
                    referrer: None,
                });
                t
            }
            3 => tp(id, c, Channel::Chat, EventType::ChatHandoff, now),
            _ => {
                let mut t = tp(id, c, Channel::CallCenter, EventType::CallEnded, now);
                t.call = Some(Call {
                    wait_seconds: Some(self.rng.random_range(300..1200)),
                    outcome: Some(CallOutcome::Resolved),
                    ..Default::default()
                });
                t
            }
        }
    }
    fn malformed(&mut self, customer: &str, now: i64) -> Vec<u8> {
        match self.rng.random_range(0..4) {
            0 => format!(r#"{{"event_id":"bad-{}","customer_id":"{customer}","channel":"web""#, self.seq).into_bytes(),
            1 => format!(r#"{{"event_id":"bad-{}","customer_id":"{customer}","channel":"email","event_type":"survey_response","event_time":{now},"survey":{{"kind":"nps","score":12}}}}"#, self.seq).into_bytes(),
            2 => format!(r#"{{"event_id":"bad-{}","channel":"web","event_type":"page_view","event_time":{now}}}"#, self.seq).into_bytes(),
            _ => format!(r#"{{"event_id":"bad-{}","customer_id":"{customer}","channel":"web","event_type":"teleported","event_time":{now}}}"#, self.seq).into_bytes(),
        }
    }
}

/// What one simulated touchpoint is made of: whose it is, when, and the
/// customer's products, order and store.
struct Draft<'a> {
    id: &'a str,
    c: &'a str,
    now: i64,
    /// The customer's favourite product, so hesitation is about one thing.
    fav: &'static str,
    /// A product drawn for this touchpoint.
    any: &'static str,
    order: String,
    store: String,
}

impl Draft<'_> {
    /// Views the favourite product again and again, then reads its reviews.
    fn hesitating(self, step: u32) -> Touchpoint {
        let Draft {
            id, c, now, fav, ..
        } = self;
        match step {
            0..=3 => {
                let ch = if step.is_multiple_of(2) {
                    Channel::Web
                } else {
                    Channel::App
                };
                let mut t = tp(id, c, ch, EventType::ProductView, now).with_sku(fav);
                t.web = Some(web(&format!("https://shop.example/p/{fav}")));
                t
            }
            _ => {
                let mut t = tp(id, c, Channel::Web, EventType::Search, now);
                t.web = Some(Web {
                    url: None,
                    query: Some(format!("{fav} reviews")),
                    referrer: None,
                });
                t
            }
        }
    }

    /// Looks around the shop, in a store and in the app.
    fn browser(self, step: u32) -> Touchpoint {
        let Draft {
            id, c, now, any, ..
        } = self;
        match step {
            0 => {
                let mut t = tp(id, c, Channel::Web, EventType::PageView, now);
                t.web = Some(web("https://shop.example/"));
                t
            }
            1 => {
                let mut t = tp(id, c, Channel::Store, EventType::ProductView, now).with_sku(any);
                t.store_id = Some(self.store);
                t
            }
            _ => tp(id, c, Channel::App, EventType::ProductView, now).with_sku(any),
        }
    }
}

/// A page visit at `url`.
fn web(url: &str) -> Web {
    Web {
        url: Some(url.to_owned()),
        query: None,
        referrer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_records_and_every_channel_appears() {
        let cfg = SimConfig {
            customers: 200,
            seed: 3,
            malformed_per_mille: 10,
        };
        let (mut a, mut b) = (Simulator::new(cfg.clone()), Simulator::new(cfg));
        let mut channels = std::collections::HashSet::new();
        let mut malformed = 0;
        for n in 0..5_000 {
            let (x, y) = (
                a.next_record(1_764_000_000_000 + n),
                b.next_record(1_764_000_000_000 + n),
            );
            assert_eq!(x.value, y.value);
            if x.malformed {
                malformed += 1;
                assert!(serde_json::from_slice::<Touchpoint>(&x.value)
                    .map(|t| t.validate().is_err())
                    .unwrap_or(true));
            } else {
                let t: Touchpoint = serde_json::from_slice(&x.value).unwrap();
                assert_eq!(t.validate(), Ok(()));
                assert_eq!(t.customer_id.as_deref(), Some(x.key.as_str()));
                channels.insert(t.channel);
            }
        }
        for ch in [
            Channel::Web,
            Channel::CallCenter,
            Channel::Store,
            Channel::Chat,
        ] {
            assert!(channels.contains(&ch), "{ch:?} missing");
        }
        assert!((20..=80).contains(&malformed), "{malformed}");
    }
}
