package dev.rapport.peer;

import java.util.Properties;
import java.util.SplittableRandom;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Fills a topic with simulated touchpoints for the benchmark, a Java port of
 * Rapport's simulator (connectors/src/simulator.rs): the same five personas, the
 * same per-persona cycles and event mix, JSON shaped exactly as Rapport's serde
 * writes it (every field present, nulls included), keyed by customer id with
 * Kafka's default partitioner (murmur2, as Rapport's publisher configures),
 * wall-clock event times like Rapport's publisher. The random generator differs
 * (SplittableRandom, not Rust's SmallRng), so the records are not byte-identical
 * to Rapport's for the same seed; the mix is.
 *
 * <pre>java -cp rapport-kafka-streams-peer.jar dev.rapport.peer.Generate BOOTSTRAP TOPIC RECORDS [CUSTOMERS] [SEED] [MALFORMED_PER_MILLE]</pre>
 */
public final class Generate {
    private static final String[] SKUS = {
        "tv-55-oled", "phone-x2", "laptop-14", "headphones-nc", "coffee-maker", "vacuum-robot",
        "watch-fit", "tablet-11", "camera-mirrorless", "speaker-home", "blender-pro", "ebike-city",
    };

    private enum Persona {
        HESITATING(5), HAPPY_BUYER(6), UNLUCKY(7), ANXIOUS(5), BROWSER(4);

        final int cycle;

        Persona(int cycle) { this.cycle = cycle; }

        static Persona of(long i) {
            int m = (int) (i % 20);
            if (m <= 2) return HESITATING;
            if (m <= 7) return HAPPY_BUYER;
            if (m <= 9) return UNLUCKY;
            if (m <= 11) return ANXIOUS;
            return BROWSER;
        }
    }

    private final long customers;
    private final long seed;
    private final int malformedPerMille;
    private final SplittableRandom rng;
    private final int[] steps;
    private long seq;

    private Generate(long customers, long seed, int malformedPerMille) {
        this.customers = customers;
        this.seed = seed;
        this.malformedPerMille = malformedPerMille;
        this.rng = new SplittableRandom(seed);
        this.steps = new int[(int) customers];
    }

    public static void main(String[] args) {
        if (args.length < 3) {
            System.err.println("usage: Generate BOOTSTRAP TOPIC RECORDS [CUSTOMERS=100000] [SEED=3] [MALFORMED_PER_MILLE=0]");
            System.exit(2);
        }
        long records = Long.parseLong(args[2]);
        long customers = args.length > 3 ? Long.parseLong(args[3]) : 100_000;
        long seed = args.length > 4 ? Long.parseLong(args[4]) : 3;
        int malformed = args.length > 5 ? Integer.parseInt(args[5]) : 0;
        Generate sim = new Generate(customers, seed, malformed);

        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(ProducerConfig.LINGER_MS_CONFIG, 10);
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        try (var producer = new KafkaProducer<>(p, new StringSerializer(), new ByteArraySerializer())) {
            for (long n = 0; n < records; n++) {
                long now = System.currentTimeMillis();
                String[] kv = sim.next(now);
                producer.send(new ProducerRecord<>(args[1], null, now, kv[0], kv[1].getBytes(java.nio.charset.StandardCharsets.UTF_8)),
                        (md, e) -> { if (e != null) { System.err.println("send failed: " + e); System.exit(1); } });
            }
            producer.flush();
        }
        System.err.printf("wrote %d touchpoints of %d customers to %s%n", records, customers, args[1]);
    }

    /** The next record, {key, JSON value}, with event time nowMs. */
    String[] next(long nowMs) {
        long i = rng.nextLong(Math.max(1, customers));
        String c = String.format("c-%06d", i);
        seq++;
        if (rng.nextInt(1000) < malformedPerMille) return new String[] {c, malformed(c, nowMs)};
        int step = steps[(int) i];
        Persona persona = Persona.of(i);
        steps[(int) i] = (step + 1) % persona.cycle;
        String id = "evt-" + Long.toHexString(seed) + "-" + seq;
        return new String[] {c, touchpoint(persona, i, step, id, c, nowMs).json()};
    }

    private Tp touchpoint(Persona persona, long i, int step, String id, String c, long now) {
        // Each customer has a favourite product, so hesitation is about one thing.
        String fav = SKUS[(int) ((i * 7) % SKUS.length)];
        String any = SKUS[rng.nextInt(SKUS.length)];
        String order = "o-" + i;
        String store = String.format("store-%02d", i % 17);
        switch (persona) {
            case HESITATING:
                if (step <= 3) {
                    Tp t = new Tp(id, c, step % 2 == 0 ? "web" : "app", "product_view", now).sku(fav);
                    t.webUrl = "https://shop.example/p/" + fav;
                    return t;
                } else {
                    Tp t = new Tp(id, c, "web", "search", now);
                    t.webQuery = fav + " reviews";
                    return t;
                }
            case HAPPY_BUYER:
                switch (step) {
                    case 0: return new Tp(id, c, "web", "product_view", now).sku(any);
                    case 1: return new Tp(id, c, "app", "add_to_cart", now).sku(any);
                    case 2: {
                        Tp t = new Tp(id, c, "store", "purchase", now).sku(any).amount(rng.nextInt(20, 900)).order(order);
                        t.storeId = store;
                        return t;
                    }
                    case 3: return new Tp(id, c, "system", "delivered", now).order(order);
                    case 4: return new Tp(id, c, "email", "survey_response", now).survey("csat", rng.nextInt(4, 6));
                    default: return new Tp(id, c, "email", "survey_response", now).survey("nps", rng.nextInt(8, 11));
                }
            case UNLUCKY:
                switch (step) {
                    case 0: return new Tp(id, c, "web", "purchase", now).sku(any).amount(rng.nextInt(20, 400)).order(order);
                    case 1: return new Tp(id, c, "system", "delivery_failed", now).order(order);
                    case 2: return new Tp(id, c, "call_center", "call_started", now);
                    case 3: {
                        Tp t = new Tp(id, c, "call_center", "call_ended", now);
                        t.call = String.format("{\"wait_seconds\":%d,\"duration_seconds\":%d,\"transfers\":%d,"
                                + "\"outcome\":\"unresolved\",\"agent_notes\":\"parcel lost, customer upset\"}",
                                rng.nextInt(120, 1500), rng.nextInt(60, 900), rng.nextInt(0, 3));
                        return t;
                    }
                    case 4: {
                        Tp t = new Tp(id, c, "chat", "chat_message", now);
                        t.chat = "{\"text\":\"Still no parcel. This is the third time I ask.\",\"sentiment\":-0.8,\"from_bot\":false}";
                        return t;
                    }
                    case 5: return new Tp(id, c, "email", "survey_response", now).survey("nps", rng.nextInt(0, 5));
                    default: return new Tp(id, c, "system", "ticket_opened", now);
                }
            case ANXIOUS:
                if (step <= 2) {
                    Tp t = new Tp(id, c, "web", "help_search", now);
                    t.webQuery = "how to change delivery address";
                    return t;
                } else if (step == 3) {
                    return new Tp(id, c, "chat", "chat_handoff", now);
                } else {
                    Tp t = new Tp(id, c, "call_center", "call_ended", now);
                    t.call = String.format("{\"wait_seconds\":%d,\"duration_seconds\":null,\"transfers\":null,"
                            + "\"outcome\":\"resolved\",\"agent_notes\":null}", rng.nextInt(300, 1200));
                    return t;
                }
            default: // BROWSER
                if (step == 0) {
                    Tp t = new Tp(id, c, "web", "page_view", now);
                    t.webUrl = "https://shop.example/";
                    return t;
                } else if (step == 1) {
                    Tp t = new Tp(id, c, "store", "product_view", now).sku(any);
                    t.storeId = store;
                    return t;
                } else {
                    return new Tp(id, c, "app", "product_view", now).sku(any);
                }
        }
    }

    /** The simulator's four kinds of malformed records (truncated, bad score, no identity, unknown type). */
    private String malformed(String c, long now) {
        return switch (rng.nextInt(4)) {
            case 0 -> String.format("{\"event_id\":\"bad-%d\",\"customer_id\":\"%s\",\"channel\":\"web\"", seq, c);
            case 1 -> String.format("{\"event_id\":\"bad-%d\",\"customer_id\":\"%s\",\"channel\":\"email\",\"event_type\":\"survey_response\",\"event_time\":%d,\"survey\":{\"kind\":\"nps\",\"score\":12}}", seq, c, now);
            case 2 -> String.format("{\"event_id\":\"bad-%d\",\"channel\":\"web\",\"event_type\":\"page_view\",\"event_time\":%d}", seq, now);
            default -> String.format("{\"event_id\":\"bad-%d\",\"customer_id\":\"%s\",\"channel\":\"web\",\"event_type\":\"teleported\",\"event_time\":%d}", seq, c, now);
        };
    }

    /** A touchpoint under construction, written as Rapport's serde_json writes it. */
    private static final class Tp {
        final String id, customer, channel, type;
        final long time;
        String storeId, orderId, sku, webUrl, webQuery, call, chat, survey;
        Double amount;

        Tp(String id, String customer, String channel, String type, long time) {
            this.id = id;
            this.customer = customer;
            this.channel = channel;
            this.type = type;
            this.time = time;
        }

        Tp sku(String s) { sku = s; return this; }
        Tp order(String o) { orderId = o; return this; }
        Tp amount(int a) { amount = (double) a; return this; }
        Tp survey(String kind, int score) {
            survey = "{\"kind\":\"" + kind + "\",\"score\":" + score + ",\"comment\":null}";
            return this;
        }

        private static String str(String s) { return s == null ? "null" : "\"" + s + "\""; }

        String json() {
            String commerce = (orderId == null && sku == null && amount == null) ? "null"
                    : "{\"order_id\":" + str(orderId) + ",\"sku\":" + str(sku) + ",\"amount\":"
                      + (amount == null ? "null" : amount.toString()) + ",\"currency\":"
                      + (amount == null ? "null" : "\"EUR\"") + ",\"quantity\":null}";
            String web = (webUrl == null && webQuery == null) ? "null"
                    : "{\"url\":" + str(webUrl) + ",\"query\":" + str(webQuery) + ",\"referrer\":null}";
            return "{\"event_id\":" + str(id) + ",\"customer_id\":" + str(customer) + ",\"anonymous_id\":null"
                    + ",\"channel\":" + str(channel) + ",\"event_type\":" + str(type) + ",\"event_time\":" + time
                    + ",\"store_id\":" + str(storeId) + ",\"commerce\":" + commerce
                    + ",\"survey\":" + (survey == null ? "null" : survey)
                    + ",\"call\":" + (call == null ? "null" : call)
                    + ",\"chat\":" + (chat == null ? "null" : chat)
                    + ",\"web\":" + web + ",\"attributes\":{}}";
        }
    }
}
