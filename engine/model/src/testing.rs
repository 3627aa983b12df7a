//! Builders for touchpoints, for tests, benchmarks and simulators.

use std::collections::BTreeMap;

use crate::touchpoint::{
    Call, Channel, Chat, Commerce, EventType, Survey, SurveyKind, Touchpoint, Web,
};

/// A minimal valid touchpoint for `customer`.
pub fn tp(
    event_id: &str,
    customer: &str,
    channel: Channel,
    event_type: EventType,
    at_ms: i64,
) -> Touchpoint {
    Touchpoint {
        event_id: event_id.to_owned(),
        customer_id: Some(customer.to_owned()),
        anonymous_id: None,
        channel,
        event_type,
        event_time: at_ms,
        store_id: None,
        commerce: None,
        survey: None,
        call: None,
        chat: None,
        web: None,
        attributes: BTreeMap::new(),
    }
}

impl Touchpoint {
    fn commerce_mut(&mut self) -> &mut Commerce {
        self.commerce.get_or_insert_with(Commerce::default)
    }

    /// With a product id.
    pub fn with_sku(mut self, sku: &str) -> Self {
        self.commerce_mut().sku = Some(sku.to_owned());
        self
    }

    /// With an amount.
    pub fn with_amount(mut self, amount: f64) -> Self {
        self.commerce_mut().amount = Some(amount);
        self.commerce_mut().currency = Some("EUR".into());
        self
    }

    /// With an order id.
    pub fn with_order(mut self, order_id: &str) -> Self {
        self.commerce_mut().order_id = Some(order_id.to_owned());
        self
    }

    /// With a survey answer.
    pub fn with_survey(mut self, kind: SurveyKind, score: i32) -> Self {
        self.survey = Some(Survey {
            kind,
            score,
            comment: None,
        });
        self
    }

    /// With a chat sentiment.
    pub fn with_sentiment(mut self, s: f64) -> Self {
        self.chat = Some(Chat {
            text: None,
            sentiment: Some(s),
            from_bot: Some(false),
        });
        self
    }

    /// With a call wait, seconds.
    pub fn with_wait(mut self, seconds: i32) -> Self {
        self.call.get_or_insert_with(Call::default).wait_seconds = Some(seconds);
        self
    }

    /// With a page url.
    pub fn with_url(mut self, url: &str) -> Self {
        self.web.get_or_insert_with(Web::default).url = Some(url.to_owned());
        self
    }
}
