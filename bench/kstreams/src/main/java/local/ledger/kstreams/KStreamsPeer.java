// KStreamsPeer: the entry point of the Kafka Streams peer that scripts/bench.sh times
// beside the projector's replay. It runs the ledger's rules as a Streams application over
// a topic that is already full, measures from JVM start until the group's committed
// offsets reach the topic's end, and prints one JSON line of results on stdout. With
// --self-test it checks the decoder and the rules instead (no broker needed).
package local.ledger.kstreams;

import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.attribute.BasicFileAttributes;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyKeyValueStore;

public final class KStreamsPeer {
    private static final String USAGE = String.join("\n",
            "usage: KStreamsPeer --brokers HOST:PORT --topic T --application-id ID --state-dir DIR",
            "                    [--guarantee exactly_once_v2|at_least_once] [--threads N]",
            "                    [--expect-events N] [--deadline-s S]",
            "       KStreamsPeer --self-test [--vector HEX]");

    private KStreamsPeer() {}

    public static void main(String[] args) {
        int rc;
        try {
            rc = run(parse(args));
        } catch (UsageException e) {
            System.err.println("kstreams-peer: " + e.getMessage());
            System.err.println(USAGE);
            rc = 2;
        } catch (Exception e) {
            System.err.println("kstreams-peer: failed: " + e);
            e.printStackTrace(System.err);
            rc = 1;
        }
        System.out.flush();
        // Exit explicitly: a client thread that outlives close() must not keep the JVM up.
        System.exit(rc);
    }

    private static final class UsageException extends Exception {
        private static final long serialVersionUID = 1L;

        UsageException(String message) {
            super(message);
        }
    }

    private static Map<String, String> parse(String[] args) throws UsageException {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--self-test")) {
                opts.put("self-test", "true");
            } else if (a.startsWith("--") && i + 1 < args.length) {
                opts.put(a.substring(2), args[++i]);
            } else {
                throw new UsageException("unexpected argument " + a);
            }
        }
        return opts;
    }

    private static String need(Map<String, String> opts, String name) throws UsageException {
        String v = opts.get(name);
        if (v == null || v.isEmpty()) {
            throw new UsageException("--" + name + " is required");
        }
        return v;
    }

    private static int run(Map<String, String> opts) throws Exception {
        if (opts.containsKey("self-test")) {
            return SelfTest.run(opts.get("vector"));
        }
        String brokers = need(opts, "brokers");
        String topic = need(opts, "topic");
        String appId = need(opts, "application-id");
        Path stateDir = Paths.get(need(opts, "state-dir"));
        String guarantee = opts.getOrDefault("guarantee", StreamsConfig.EXACTLY_ONCE_V2);
        if (!guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2) && !guarantee.equals(StreamsConfig.AT_LEAST_ONCE)) {
            throw new UsageException("--guarantee must be exactly_once_v2 or at_least_once");
        }
        int threads = Integer.parseInt(opts.getOrDefault("threads", "2"));
        long expect = Long.parseLong(opts.getOrDefault("expect-events", "-1"));
        long deadlineS = Long.parseLong(opts.getOrDefault("deadline-s", "600"));
        // The clock starts when the JVM does, as the projector's replay is timed from its
        // process start: start-up, group join and store creation are part of the cost.
        long jvmStartMs = ManagementFactory.getRuntimeMXBean().getStartTime();
        long deadlineMs = jvmStartMs + deadlineS * 1000;

        Properties adminProps = new Properties();
        adminProps.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        adminProps.put(AdminClientConfig.CLIENT_ID_CONFIG, appId + "-watch");
        try (Admin admin = Admin.create(adminProps)) {
            // 1. The target: the topic is filled before this starts, so its end offsets are
            // final. The fill's producer is idempotent but not transactional, so the input
            // holds no transaction markers and end - start is its record count; checked
            // against --expect-events.
            TopicDescription desc = admin.describeTopics(List.of(topic)).allTopicNames().get(30, TimeUnit.SECONDS).get(topic);
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
            Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
            desc.partitions().forEach(p -> {
                latest.put(new TopicPartition(topic, p.partition()), OffsetSpec.latest());
                earliest.put(new TopicPartition(topic, p.partition()), OffsetSpec.earliest());
            });
            Map<TopicPartition, Long> end = offsets(admin.listOffsets(latest));
            Map<TopicPartition, Long> start = offsets(admin.listOffsets(earliest));
            long events = 0;
            for (TopicPartition tp : end.keySet()) {
                events += end.get(tp) - start.get(tp);
            }
            if (expect >= 0 && events != expect) {
                System.err.printf("kstreams-peer: %s holds %d records by its offsets, expected %d%n", topic, events, expect);
                return 1;
            }

            // 2. The application.
            KafkaStreams streams = new KafkaStreams(topology(topic), streamsProps(brokers, appId, stateDir, guarantee, threads));
            AtomicLong runningAtMs = new AtomicLong(-1);
            AtomicReference<Throwable> failure = new AtomicReference<>();
            streams.setStateListener((now, before) -> {
                if (now == KafkaStreams.State.RUNNING) {
                    runningAtMs.compareAndSet(-1, System.currentTimeMillis());
                }
            });
            streams.setUncaughtExceptionHandler(e -> {
                failure.compareAndSet(null, e);
                return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
            });
            streams.start();

            // 3. Done when every partition's committed offset is at its end. Under
            // exactly_once_v2 offsets are committed with each transaction (commit.interval.ms
            // is 100 ms then), so this also means every store update is committed.
            long doneAtMs;
            long committed;
            while (true) {
                Throwable err = failure.get();
                KafkaStreams.State st = streams.state();
                if (err != null || st == KafkaStreams.State.ERROR || st == KafkaStreams.State.NOT_RUNNING
                        || st == KafkaStreams.State.PENDING_ERROR) {
                    System.err.println("kstreams-peer: the application stopped (" + st + ")" + (err == null ? "" : ": " + err));
                    streams.close(Duration.ofSeconds(30));
                    return 1;
                }
                Map<TopicPartition, OffsetAndMetadata> got = admin.listConsumerGroupOffsets(appId)
                        .partitionsToOffsetAndMetadata().get(10, TimeUnit.SECONDS);
                committed = 0;
                boolean all = true;
                for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
                    OffsetAndMetadata om = got.get(e.getKey());
                    long c = om == null ? start.get(e.getKey()) : om.offset();
                    committed += c - start.get(e.getKey());
                    all &= c >= e.getValue();
                }
                long now = System.currentTimeMillis();
                if (all) {
                    doneAtMs = now;
                    break;
                }
                if (now > deadlineMs) {
                    System.err.printf("kstreams-peer: deadline of %d s passed with %d of %d records committed (state %s); giving up%n",
                            deadlineS, committed, events, st);
                    streams.close(Duration.ofSeconds(30));
                    return 3;
                }
                Thread.sleep(50);
            }

            // 4. The stores' contents, through interactive queries, for bench.sh to check
            // against the Rust rules' result over the same events.
            Map<String, Object> state = storeTotals(streams);
            boolean closed = streams.close(Duration.ofSeconds(60));
            long dirBytes = dirSize(stateDir);

            double seconds = (doneAtMs - jvmStartMs) / 1000.0;
            long running = runningAtMs.get();
            Map<String, Object> out = new java.util.LinkedHashMap<>();
            out.put("events", events);
            out.put("seconds", round3(seconds));
            out.put("per_s", Math.round(events / seconds));
            out.put("guarantee", guarantee);
            out.put("threads", threads);
            out.put("partitions", end.size());
            out.put("seconds_to_running", running < 0 ? null : round3((running - jvmStartMs) / 1000.0));
            out.put("per_s_from_running", running < 0 || doneAtMs <= running ? null : Math.round(events / ((doneAtMs - running) / 1000.0)));
            out.put("state", state);
            out.put("outcomes", LedgerProcessor.OUTCOMES.entrySet().stream().collect(Collectors.toMap(
                    e -> e.getKey().name().toLowerCase(Locale.ROOT), e -> e.getValue().sum(), (a, b) -> a, TreeMap::new)));
            out.put("undecodable", LedgerProcessor.UNDECODABLE.entrySet().stream().collect(Collectors.toMap(
                    Map.Entry::getKey, e -> e.getValue().sum(), (a, b) -> a, TreeMap::new)));
            out.put("state_dir_mb", round3(dirBytes / 1048576.0));
            out.put("closed_cleanly", closed);
            out.put("application_id", appId);
            System.out.println(Json.write(out));
            return 0;
        }
    }

    static Topology topology(String topic) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(LedgerProcessor.accountsStore());
        builder.addStateStore(LedgerProcessor.commandsStore());
        builder.stream(topic, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .process(LedgerProcessor::new, LedgerProcessor.ACCOUNTS, LedgerProcessor.COMMANDS);
        return builder.build();
    }

    static Properties streamsProps(String brokers, String appId, Path stateDir, String guarantee, int threads) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        // One broker: the changelog topics cannot have the default three replicas.
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // exactly_once_v2's default, stated so that at_least_once (default 30 s) commits as
        // often: the run is done when the offsets are committed, and a 30 s interval
        // would time the interval, not the processing.
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        return p;
    }

    private static Map<TopicPartition, Long> offsets(ListOffsetsResult r) throws Exception {
        Map<TopicPartition, Long> out = new TreeMap<>((a, b) -> Integer.compare(a.partition(), b.partition()));
        r.all().get(30, TimeUnit.SECONDS).forEach((tp, info) -> out.put(tp, info.offset()));
        return out;
    }

    /** Totals over both stores of every local task (all of them: this is the only instance). */
    private static Map<String, Object> storeTotals(KafkaStreams streams) {
        ReadOnlyKeyValueStore<String, Ledger.AccountState> accounts = streams.store(
                StoreQueryParameters.fromNameAndType(LedgerProcessor.ACCOUNTS, QueryableStoreTypes.keyValueStore()));
        long n = 0;
        long open = 0;
        long balance = 0;
        long applied = 0;
        try (KeyValueIterator<String, Ledger.AccountState> it = accounts.all()) {
            while (it.hasNext()) {
                KeyValue<String, Ledger.AccountState> kv = it.next();
                n++;
                open += kv.value.open() ? 1 : 0;
                balance = Math.addExact(balance, kv.value.balance());
                applied += kv.value.appliedEvents();
            }
        }
        ReadOnlyKeyValueStore<String, LedgerProcessor.CommandRecord> commands = streams.store(
                StoreQueryParameters.fromNameAndType(LedgerProcessor.COMMANDS, QueryableStoreTypes.keyValueStore()));
        Map<String, Long> byOutcome = new TreeMap<>();
        try (KeyValueIterator<String, LedgerProcessor.CommandRecord> it = commands.all()) {
            while (it.hasNext()) {
                byOutcome.merge(it.next().value.outcome().name().toLowerCase(Locale.ROOT), 1L, Long::sum);
            }
        }
        Map<String, Object> s = new java.util.LinkedHashMap<>();
        s.put("accounts", n);
        s.put("accounts_open", open);
        s.put("balance_sum", balance);
        s.put("applied_events", applied);
        s.put("commands", byOutcome.values().stream().mapToLong(Long::longValue).sum());
        s.put("commands_by_outcome", byOutcome);
        return s;
    }

    /** Bytes of the files under a directory (RocksDB writes no sparse files, so this is its disk use). */
    private static long dirSize(Path dir) throws IOException {
        long[] total = new long[1];
        if (Files.exists(dir)) {
            Files.walkFileTree(dir, new SimpleFileVisitor<>() {
                @Override
                public FileVisitResult visitFile(Path f, BasicFileAttributes attrs) {
                    total[0] += attrs.size();
                    return FileVisitResult.CONTINUE;
                }
            });
        }
        return total[0];
    }

    private static double round3(double x) {
        return Math.round(x * 1000.0) / 1000.0;
    }
}
