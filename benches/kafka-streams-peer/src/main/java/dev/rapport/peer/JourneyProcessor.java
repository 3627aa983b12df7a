package dev.rapport.peer;

import dev.rapport.peer.Json.Action;
import dev.rapport.peer.Json.EventType;
import dev.rapport.peer.Json.Touchpoint;
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * Rapport's per-touchpoint work, with the Processor API: read the customer's
 * profile, fire the waits that came due, apply the touchpoint, evaluate three
 * journeys, write the profile back and forward the actions.
 *
 * <p>The journeys are hand-coded here with the rules of Rapport's shipped files
 * (deploy/journeys/hesitation_guide.toml, recovery_offer.toml,
 * post_delivery_survey.toml); Rapport reads and compiles those files instead.
 *
 * <p>Pending waits live in the profile (as in Rapport) and in a small index store
 * ordered by due time (Rapport keeps the same kind of timer index in RocksDB), so
 * the stream-time punctuator finds due waits without scanning every profile.
 */
final class JourneyProcessor implements Processor<String, byte[], String, byte[]> {
    static final String PROFILES = "profiles";
    static final String WAITS = "waits";

    static final String HESITATION = "hesitation_guide";
    static final String RECOVERY = "recovery_offer";
    static final String SURVEY = "post_delivery_survey";

    private static final long HOUR = 3_600_000L;
    private static final long HESITATION_WINDOW = 72 * HOUR;
    private static final long HESITATION_REENTRY = 168 * HOUR;
    private static final long RECOVERY_REENTRY = 24 * HOUR;
    private static final long SURVEY_WAIT = 2 * HOUR;
    /** Firing marks older than the longest re-entry delay are dropped from the profile. */
    private static final long MARK_KEEP = HESITATION_REENTRY;

    // Counters shared by the stream threads, read by Main for the report.
    static final AtomicLong FIRST_NANOS = new AtomicLong();
    static volatile long firstCpuNanos;
    static final LongAdder MALFORMED = new LongAdder();
    static final LongAdder GUIDE_LINKS = new LongAdder();
    static final LongAdder RECOVERY_OFFERS = new LongAdder();
    static final LongAdder SURVEY_REQUESTS = new LongAdder();

    private ProcessorContext<String, byte[]> context;
    private KeyValueStore<String, Profile> profiles;
    private KeyValueStore<Bytes, byte[]> waits;

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
        this.context = context;
        this.profiles = context.getStateStore(PROFILES);
        this.waits = context.getStateStore(WAITS);
        // Waits also fire when no later event of the customer arrives: on stream
        // time (event time of the partition's records), checked every minute of it.
        context.schedule(Duration.ofMinutes(1), PunctuationType.STREAM_TIME, this::fireDue);
    }

    @Override
    public void process(Record<String, byte[]> record) {
        if (FIRST_NANOS.get() == 0 && FIRST_NANOS.compareAndSet(0, System.nanoTime())) {
            firstCpuNanos = cpuNanos();
        }
        Touchpoint t = Json.parse(record.value());
        if (t == null) {
            // Rapport dead-letters these; the peer skips and counts them.
            MALFORMED.increment();
            return;
        }
        String id = t.identity();
        long now = t.event_time;
        Profile p = profiles.get(id);
        if (p == null) p = new Profile();

        // 1. Waits due by this event's time fire first: the wait ended before it.
        fireWaits(id, p, now);
        // 2. A reported problem cancels the pending survey waits.
        if (cancelsSurvey(t.event_type) && !p.waits.isEmpty()) {
            for (Profile.Wait w : p.waits) waits.delete(waitKey(w.dueMs(), id));
            p.waits.clear();
        }
        // 3. The profile learns the touchpoint; the journeys read the updated profile.
        p.apply(t);
        hesitationGuide(id, t, p);
        recoveryOffer(id, t, p);
        postDeliverySurvey(id, t, p);

        profiles.put(id, p);
    }

    /** hesitation_guide: 3 views of a sku within 72h, not bought in that window; once per sku per 168h. */
    private void hesitationGuide(String id, Touchpoint t, Profile p) {
        if (t.event_type != EventType.product_view) return;
        String sku = t.sku();
        if (sku == null) return;
        long now = t.event_time;
        Profile.Product product = p.findProduct(sku);
        if (product == null || product.unboughtViews(now - HESITATION_WINDOW, now) < 3) return;
        if (!p.mayEnter(HESITATION, sku, now, HESITATION_REENTRY)) return;
        p.markFired(HESITATION, sku, now, MARK_KEEP);
        Action a = action(id, "guide_link", HESITATION, t.event_id, now, "reply", "");
        a.payload.put("sku", sku);
        a.payload.put("guide_url", "https://shop.example/guides/" + sku);
        emit(a);
        GUIDE_LINKS.increment();
    }

    /** recovery_offer: a failed delivery or a detractor score (NPS <= 6, CSAT <= 2, CES <= 2); once per 24h. */
    private void recoveryOffer(String id, Touchpoint t, Profile p) {
        boolean bad = switch (t.event_type) {
            case delivery_failed -> true;
            case survey_response -> switch (t.survey.kind) {
                case nps -> t.survey.score <= 6;
                case csat, ces -> t.survey.score <= 2;
            };
            default -> false;
        };
        if (!bad) return;
        long now = t.event_time;
        if (!p.mayEnter(RECOVERY, "", now, RECOVERY_REENTRY)) return;
        p.markFired(RECOVERY, "", now, MARK_KEEP);
        // Upset customers hear from a person on the channel they used, not a bulk email.
        String channel = switch (t.channel) {
            case call_center, chat, app -> t.channel.name();
            default -> "email";
        };
        Action a = action(id, "recovery_offer", RECOVERY, t.event_id, now, channel, "");
        a.payload.put("offer_code", "RECOVERY-10");
        a.payload.put("tone", "personal_outreach");
        if (t.orderId() != null) a.payload.put("order_id", t.orderId());
        emit(a);
        RECOVERY_OFFERS.increment();
    }

    /** post_delivery_survey: on `delivered`, wait 2h of event time (one wait per order). */
    private void postDeliverySurvey(String id, Touchpoint t, Profile p) {
        if (t.event_type != EventType.delivered) return;
        String key = t.orderId() != null ? t.orderId() : t.event_id;
        for (Profile.Wait w : p.waits) if (w.key().equals(key)) return;
        long due = t.event_time + SURVEY_WAIT;
        p.waits.add(new Profile.Wait(SURVEY, key, due, t.event_id, t.event_time));
        waits.put(waitKey(due, id), new byte[0]);
    }

    private static boolean cancelsSurvey(EventType type) {
        return switch (type) {
            case delivery_failed, refund_requested, ticket_opened, return_ -> true;
            default -> false;
        };
    }

    /** Fires the customer's waits due at or before nowMs (the caller writes the profile back). */
    private boolean fireWaits(String id, Profile p, long nowMs) {
        boolean fired = false;
        for (Iterator<Profile.Wait> it = p.waits.iterator(); it.hasNext(); ) {
            Profile.Wait w = it.next();
            if (w.dueMs() > nowMs) continue;
            it.remove();
            waits.delete(waitKey(w.dueMs(), id));
            Action a = action(id, "survey_request", SURVEY, w.triggerEventId(), w.triggerEventTime(), "email", "timer");
            a.payload.put("survey", "csat");
            a.payload.put("order_id", w.key());
            emit(a);
            SURVEY_REQUESTS.increment();
            fired = true;
        }
        return fired;
    }

    /** The stream-time punctuator: fires every wait due by streamTime, for customers who went quiet. */
    private void fireDue(long streamTime) {
        List<String> due = new ArrayList<>();
        List<Bytes> keys = new ArrayList<>();
        try (KeyValueIterator<Bytes, byte[]> it = waits.range(waitKey(0, ""), waitKey(streamTime + 1, ""))) {
            while (it.hasNext()) {
                KeyValue<Bytes, byte[]> kv = it.next();
                keys.add(kv.key);
                byte[] k = kv.key.get();
                due.add(new String(k, Long.BYTES, k.length - Long.BYTES, StandardCharsets.UTF_8));
            }
        }
        for (int i = 0; i < due.size(); i++) {
            String id = due.get(i);
            waits.delete(keys.get(i));
            Profile p = profiles.get(id);
            if (p != null && fireWaits(id, p, streamTime)) profiles.put(id, p);
        }
    }

    /** Index key of a wait: due time (big-endian, so keys sort by time) then the customer id. */
    private static Bytes waitKey(long dueMs, String id) {
        byte[] idBytes = id.getBytes(StandardCharsets.UTF_8);
        return Bytes.wrap(ByteBuffer.allocate(Long.BYTES + idBytes.length).putLong(dueMs).put(idBytes).array());
    }

    private static Action action(String id, String kind, String journey, String eventId, long eventTime,
                                 String channel, String discriminator) {
        Action a = new Action();
        // A stable id per journey, customer, trigger event and step, like Rapport's
        // (Rapport uses UUID v5; the JDK has v3, equally deterministic).
        a.action_id = UUID.nameUUIDFromBytes((journey + '\0' + id + '\0' + eventId + '\0' + discriminator)
                .getBytes(StandardCharsets.UTF_8)).toString();
        a.customer_id = id;
        a.kind = kind;
        a.journey = journey;
        a.trigger_event_id = eventId;
        a.trigger_event_time = eventTime;
        a.channel = channel;
        return a;
    }

    private void emit(Action a) {
        context.forward(new Record<>(a.customer_id, a.toBytes(), a.trigger_event_time));
    }

    static long cpuNanos() {
        return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
                .getProcessCpuTime();
    }
}
