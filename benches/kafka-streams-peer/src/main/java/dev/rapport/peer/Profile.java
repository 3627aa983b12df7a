package dev.rapport.peer;

import dev.rapport.peer.Json.Channel;
import dev.rapport.peer.Json.EventType;
import dev.rapport.peer.Json.Touchpoint;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * What the peer knows about one customer: the part of Rapport's profile
 * (engine/model/src/profile.rs) that its three benchmarked journeys read or that
 * agents see, with the same bounds (10 recent touchpoints, 16 products, 8 views
 * per product).
 *
 * <p>Stored with a compact hand-written binary serde ({@link #SERDE}) rather than
 * Jackson: Rapport stores its profiles as postcard (a compact binary encoding), so
 * a binary encoding keeps the comparison about the engines, not about JSON
 * encoding costs, and it keeps the state and changelog sizes comparable.
 */
final class Profile {
    static final int RECENT_TOUCHPOINTS = 10;
    static final int TRACKED_PRODUCTS = 16;
    static final int VIEWS_PER_PRODUCT = 8;
    /** Encoding version written first, so a future layout can read old records. */
    private static final byte VERSION = 1;

    long firstSeenMs;
    long lastSeenMs;
    long events;
    final long[] channelCount = new long[Channel.values().length];
    final long[] channelLastMs = new long[Channel.values().length];
    int orders;
    double lifetimeValue;
    int returns;
    long lastPurchaseMs;
    /** Latest survey answers, indexed by SurveyKind (score -1 = none). */
    final int[] score = {-1, -1, -1};
    final long[] scoreMs = new long[3];
    /** Failed deliveries, refund requests and tickets not yet resolved. */
    int openIssues;
    final List<Product> products = new ArrayList<>();
    /** The last touchpoints, oldest first, as shown to agents. */
    final List<Recent> recent = new ArrayList<>();
    /** When each journey last fired, per key (a sku, or ""), for re-entry rules. */
    final List<Mark> marks = new ArrayList<>();
    /** Pending waits of post_delivery_survey, one per order. */
    final List<Wait> waits = new ArrayList<>();

    /** Interest in one product: recent view times and the latest purchase of it. */
    static final class Product {
        String sku;
        long[] viewsMs = new long[0];
        long purchasedMs;
        long touchedMs;

        /** Views within [sinceMs, nowMs], none when it was bought within the window (Rapport's unbought_views). */
        int unboughtViews(long sinceMs, long nowMs) {
            if (purchasedMs >= sinceMs) return 0;
            int n = 0;
            for (long v : viewsMs) if (v >= sinceMs && v <= nowMs) n++;
            return n;
        }

        /** Inserts a view time, keeping the views sorted (oldest first) and at most VIEWS_PER_PRODUCT. */
        void pushView(long at) {
            int pos = 0;
            while (pos < viewsMs.length && viewsMs[pos] <= at) pos++;
            long[] next = new long[viewsMs.length + 1];
            System.arraycopy(viewsMs, 0, next, 0, pos);
            next[pos] = at;
            System.arraycopy(viewsMs, pos, next, pos + 1, viewsMs.length - pos);
            viewsMs = next.length > VIEWS_PER_PRODUCT ? Arrays.copyOfRange(next, 1, next.length) : next;
        }
    }

    record Recent(String eventId, Channel channel, EventType type, long atMs) {}

    static final class Mark {
        String journey;
        String key;
        long firedMs;

        Mark(String journey, String key, long firedMs) {
            this.journey = journey;
            this.key = key;
            this.firedMs = firedMs;
        }
    }

    /** A wait in the profile: committed, restored and replayed with the rest of the customer's state. */
    record Wait(String journey, String key, long dueMs, String triggerEventId, long triggerEventTime) {}

    /** Applies one touchpoint (the counterpart of Rapport's Profile::apply). */
    void apply(Touchpoint t) {
        long at = t.event_time;
        if (events == 0 || at < firstSeenMs) firstSeenMs = at;
        lastSeenMs = Math.max(lastSeenMs, at);
        events++;
        int ch = t.channel.ordinal();
        channelCount[ch]++;
        channelLastMs[ch] = Math.max(channelLastMs[ch], at);
        switch (t.event_type) {
            case product_view -> {
                String sku = t.sku();
                if (sku != null) product(sku, at).pushView(at);
            }
            case purchase -> {
                orders++;
                lastPurchaseMs = Math.max(lastPurchaseMs, at);
                if (t.commerce != null) {
                    if (t.commerce.amount != null) lifetimeValue += t.commerce.amount;
                    String sku = t.sku();
                    if (sku != null) {
                        Product p = product(sku, at);
                        p.purchasedMs = Math.max(p.purchasedMs, at);
                    }
                }
            }
            case return_ -> {
                returns++;
                if (t.commerce != null && t.commerce.amount != null) {
                    lifetimeValue = Math.max(0.0, lifetimeValue - t.commerce.amount);
                }
            }
            case survey_response -> {
                int k = t.survey.kind.ordinal();
                // A late answer does not overwrite a newer one.
                if (score[k] < 0 || scoreMs[k] <= at) {
                    score[k] = t.survey.score;
                    scoreMs[k] = at;
                }
            }
            case delivery_failed, refund_requested, ticket_opened -> openIssues++;
            case ticket_resolved -> openIssues = Math.max(0, openIssues - 1);
            default -> { }
        }
        if (recent.size() == RECENT_TOUCHPOINTS) recent.remove(0);
        recent.add(new Recent(t.event_id, t.channel, t.event_type, at));
    }

    /** The interest record for sku, created if missing (evicting the least recently viewed). */
    Product product(String sku, long at) {
        for (Product p : products) {
            if (p.sku.equals(sku)) {
                p.touchedMs = Math.max(p.touchedMs, at);
                return p;
            }
        }
        if (products.size() == TRACKED_PRODUCTS) {
            int stalest = 0;
            for (int i = 1; i < products.size(); i++) {
                if (products.get(i).touchedMs < products.get(stalest).touchedMs) stalest = i;
            }
            products.remove(stalest);
        }
        Product p = new Product();
        p.sku = sku;
        p.touchedMs = at;
        products.add(p);
        return p;
    }

    Product findProduct(String sku) {
        for (Product p : products) if (p.sku.equals(sku)) return p;
        return null;
    }

    /** Whether journey may fire again for key at nowMs, given its re-entry delay. */
    boolean mayEnter(String journey, String key, long nowMs, long afterMs) {
        for (Mark m : marks) {
            if (m.journey.equals(journey) && m.key.equals(key)) return m.firedMs + afterMs <= nowMs;
        }
        return true;
    }

    /** Records a firing; marks older than keepMs are pruned so the list stays small. */
    void markFired(String journey, String key, long nowMs, long keepMs) {
        marks.removeIf(m -> m.firedMs + keepMs < nowMs && !(m.journey.equals(journey) && m.key.equals(key)));
        for (Mark m : marks) {
            if (m.journey.equals(journey) && m.key.equals(key)) {
                m.firedMs = Math.max(m.firedMs, nowMs);
                return;
            }
        }
        marks.add(new Mark(journey, key, nowMs));
    }

    // ---------------------------------------------------------------- serde

    byte[] toBytes() {
        ByteArrayOutputStream buf = new ByteArrayOutputStream(256);
        try (DataOutputStream out = new DataOutputStream(buf)) {
            out.writeByte(VERSION);
            out.writeLong(firstSeenMs);
            out.writeLong(lastSeenMs);
            out.writeLong(events);
            for (int i = 0; i < channelCount.length; i++) {
                out.writeLong(channelCount[i]);
                out.writeLong(channelLastMs[i]);
            }
            out.writeInt(orders);
            out.writeDouble(lifetimeValue);
            out.writeInt(returns);
            out.writeLong(lastPurchaseMs);
            for (int k = 0; k < 3; k++) {
                out.writeInt(score[k]);
                out.writeLong(scoreMs[k]);
            }
            out.writeInt(openIssues);
            out.writeByte(products.size());
            for (Product p : products) {
                out.writeUTF(p.sku);
                out.writeByte(p.viewsMs.length);
                for (long v : p.viewsMs) out.writeLong(v);
                out.writeLong(p.purchasedMs);
                out.writeLong(p.touchedMs);
            }
            out.writeByte(recent.size());
            for (Recent r : recent) {
                out.writeUTF(r.eventId());
                out.writeByte(r.channel().ordinal());
                out.writeByte(r.type().ordinal());
                out.writeLong(r.atMs());
            }
            out.writeShort(marks.size());
            for (Mark m : marks) {
                out.writeUTF(m.journey);
                out.writeUTF(m.key);
                out.writeLong(m.firedMs);
            }
            out.writeShort(waits.size());
            for (Wait w : waits) {
                out.writeUTF(w.journey());
                out.writeUTF(w.key());
                out.writeLong(w.dueMs());
                out.writeUTF(w.triggerEventId());
                out.writeLong(w.triggerEventTime());
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return buf.toByteArray();
    }

    static Profile fromBytes(byte[] bytes) {
        Profile p = new Profile();
        try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(bytes))) {
            byte version = in.readByte();
            if (version != VERSION) throw new IllegalStateException("unknown profile encoding " + version);
            p.firstSeenMs = in.readLong();
            p.lastSeenMs = in.readLong();
            p.events = in.readLong();
            for (int i = 0; i < p.channelCount.length; i++) {
                p.channelCount[i] = in.readLong();
                p.channelLastMs[i] = in.readLong();
            }
            p.orders = in.readInt();
            p.lifetimeValue = in.readDouble();
            p.returns = in.readInt();
            p.lastPurchaseMs = in.readLong();
            for (int k = 0; k < 3; k++) {
                p.score[k] = in.readInt();
                p.scoreMs[k] = in.readLong();
            }
            p.openIssues = in.readInt();
            int products = in.readUnsignedByte();
            for (int i = 0; i < products; i++) {
                Product pr = new Product();
                pr.sku = in.readUTF();
                pr.viewsMs = new long[in.readUnsignedByte()];
                for (int j = 0; j < pr.viewsMs.length; j++) pr.viewsMs[j] = in.readLong();
                pr.purchasedMs = in.readLong();
                pr.touchedMs = in.readLong();
                p.products.add(pr);
            }
            Channel[] channels = Channel.values();
            EventType[] types = EventType.values();
            int recent = in.readUnsignedByte();
            for (int i = 0; i < recent; i++) {
                p.recent.add(new Recent(in.readUTF(), channels[in.readUnsignedByte()],
                        types[in.readUnsignedByte()], in.readLong()));
            }
            int marks = in.readUnsignedShort();
            for (int i = 0; i < marks; i++) p.marks.add(new Mark(in.readUTF(), in.readUTF(), in.readLong()));
            int waits = in.readUnsignedShort();
            for (int i = 0; i < waits; i++) {
                p.waits.add(new Wait(in.readUTF(), in.readUTF(), in.readLong(), in.readUTF(), in.readLong()));
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return p;
    }

    /** The store's value serde. */
    static final Serde<Profile> SERDE = Serdes.serdeFrom(
            (Serializer<Profile>) (topic, p) -> p == null ? null : p.toBytes(),
            (Deserializer<Profile>) (topic, b) -> b == null ? null : fromBytes(b));
}
