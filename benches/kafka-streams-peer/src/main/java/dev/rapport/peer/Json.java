package dev.rapport.peer;

import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import com.fasterxml.jackson.databind.ObjectWriter;
import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The tiny JSON layer: the touchpoint Rapport consumes (schemas/v1/touchpoint.avsc,
 * as JSON) and the action it produces. Typed classes read by Jackson databind, the
 * Java counterpart of the serde-derived structs Rapport decodes into.
 *
 * <p>Field names are the wire names (snake_case), so there is no mapping layer.
 * Unknown fields and unknown enum values are errors, as in Rapport
 * ({@code deny_unknown_fields}): such records count as malformed.
 */
final class Json {
    private Json() {}

    static final ObjectMapper MAPPER = new ObjectMapper()
            .enable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES)
            .enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES);
    private static final ObjectReader TOUCHPOINT = MAPPER.readerFor(Touchpoint.class);
    private static final ObjectWriter ACTION = MAPPER.writerFor(Action.class);

    // Enum constants are spelled as on the wire (Rapport's snake_case), so Jackson maps them by
    // name; only `return`, a Java keyword, needs its wire name spelled out.

    /** Where a touchpoint happened; the index is the profile's per-channel slot. */
    enum Channel { web, app, call_center, store, chat, email, system }

    /** What happened (schemas/v1/touchpoint.avsc, EventType). */
    enum EventType {
        page_view, product_view, search, add_to_cart, checkout_started, checkout_abandoned,
        purchase, @JsonProperty("return") return_, help_search, call_started, call_ended,
        chat_message, chat_handoff, survey_response, delivered, delivery_failed,
        refund_requested, ticket_opened, ticket_resolved, identify, consent_changed;
    }

    enum SurveyKind { nps, csat, ces }

    enum CallOutcome { resolved, unresolved, escalated, abandoned, callback_scheduled }

    static final class Commerce {
        public String order_id;
        public String sku;
        public Double amount;
        public String currency;
        public Integer quantity;
    }

    static final class Survey {
        public SurveyKind kind;
        public Integer score;
        public String comment;
    }

    static final class Call {
        public Integer wait_seconds;
        public Integer duration_seconds;
        public Integer transfers;
        public CallOutcome outcome;
        public String agent_notes;
    }

    static final class Chat {
        public String text;
        public Double sentiment;
        public Boolean from_bot;
    }

    static final class Web {
        public String url;
        public String query;
        public String referrer;
    }

    /** One touchpoint, as Rapport reads it. */
    static final class Touchpoint {
        public String event_id;
        public String customer_id;
        public String anonymous_id;
        public Channel channel;
        public EventType event_type;
        public Long event_time;
        public String store_id;
        public Commerce commerce;
        public Survey survey;
        public Call call;
        public Chat chat;
        public Web web;
        public Map<String, String> attributes;

        /** The id the profile is keyed by: the customer id, else the anonymous id. */
        String identity() {
            if (customer_id != null && !customer_id.isEmpty()) return customer_id;
            if (anonymous_id != null && !anonymous_id.isEmpty()) return anonymous_id;
            return null;
        }

        String sku() {
            return commerce == null || commerce.sku == null || commerce.sku.isEmpty() ? null : commerce.sku;
        }

        String orderId() {
            return commerce == null || commerce.order_id == null || commerce.order_id.isEmpty() ? null : commerce.order_id;
        }
    }

    /** Rapport's event-time bounds (2000-01-01 .. 2100-01-01, epoch ms). */
    static final long MIN_EVENT_TIME = 946_684_800_000L;
    static final long MAX_EVENT_TIME = 4_102_444_800_000L;

    /**
     * Parses and validates a touchpoint with Rapport's rules (Touchpoint::validate);
     * returns null for anything Rapport would dead-letter.
     */
    static Touchpoint parse(byte[] value) {
        if (value == null) return null;
        Touchpoint t;
        try {
            t = TOUCHPOINT.readValue(value);
        } catch (IOException e) {
            return null;
        }
        if (t == null || t.event_id == null || t.event_id.isBlank() || t.channel == null
                || t.event_type == null || t.event_time == null || t.identity() == null) return null;
        if (t.event_time < MIN_EVENT_TIME || t.event_time >= MAX_EVENT_TIME) return null;
        if (t.event_type == EventType.survey_response && t.survey == null) return null;
        if (t.survey != null) {
            if (t.survey.kind == null || t.survey.score == null) return null;
            int s = t.survey.score;
            boolean ok = switch (t.survey.kind) {
                case nps -> s >= 0 && s <= 10;
                case csat -> s >= 1 && s <= 5;
                case ces -> s >= 1 && s <= 7;
            };
            if (!ok) return null;
        }
        if (t.chat != null && t.chat.sentiment != null && !(t.chat.sentiment >= -1.0 && t.chat.sentiment <= 1.0)) return null;
        if (t.commerce != null && t.commerce.amount != null
                && (!Double.isFinite(t.commerce.amount) || t.commerce.amount < 0.0)) return null;
        return t;
    }

    /** One action, as Rapport writes it to its action topic (without reasons and emotional state). */
    static final class Action {
        public String action_id;
        public String customer_id;
        public String kind;
        public String journey;
        public String trigger_event_id;
        public long trigger_event_time;
        public String channel;
        public Map<String, String> payload = new LinkedHashMap<>();

        byte[] toBytes() {
            try {
                return ACTION.writeValueAsBytes(this);
            } catch (IOException e) {
                throw new IllegalStateException("cannot write action", e);
            }
        }
    }
}
