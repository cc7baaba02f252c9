// LedgerProcessor: the Kafka Streams processor of the peer. It decodes each record's
// envelope and applies the ledger's rules over two persistent key-value stores, as the
// projector does over its sled trees: accounts (by account id) and commands (by account
// id and command id, the idempotency key's scope).
package local.ledger.kstreams;

import java.nio.ByteBuffer;
import java.util.EnumMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.LongAdder;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;

final class LedgerProcessor implements Processor<byte[], byte[], Void, Void> {
    static final String ACCOUNTS = "accounts";
    static final String COMMANDS = "commands";
    // Neither id may contain it, so account id + SEP + command id is unambiguous.
    static final char SEP = '/';

    /**
     * What the processors of this JVM did, for the report. Informational: the state
     * stores are the truth (a task that is retried after an aborted transaction counts its
     * records again here, but not in its stores).
     */
    static final Map<Ledger.Outcome, LongAdder> OUTCOMES = new EnumMap<>(Ledger.Outcome.class);
    static final Map<String, LongAdder> UNDECODABLE = new ConcurrentHashMap<>();

    static {
        for (Ledger.Outcome o : Ledger.Outcome.values()) {
            OUTCOMES.put(o, new LongAdder());
        }
    }

    /** An account's state as 17 bytes: open flag, balance, applied events. */
    static final Serde<Ledger.AccountState> ACCOUNT_SERDE = Serdes.serdeFrom(
            (topic, s) -> s == null ? null : ByteBuffer.allocate(17)
                    .put((byte) (s.open() ? 1 : 0))
                    .putLong(s.balance())
                    .putLong(s.appliedEvents())
                    .array(),
            (topic, b) -> {
                if (b == null) {
                    return null;
                }
                ByteBuffer buf = ByteBuffer.wrap(b);
                return new Ledger.AccountState(buf.get() != 0, buf.getLong(), buf.getLong());
            });

    /**
     * A command's record, what the projector keeps per command id (minus the account,
     * which is in the key): the outcome, and where and when its event was.
     */
    record CommandRecord(Ledger.Outcome outcome, int partition, long offset, long eventTimeMs) {}

    static final Serde<CommandRecord> COMMAND_SERDE = Serdes.serdeFrom(
            (topic, c) -> c == null ? null : ByteBuffer.allocate(21)
                    .put((byte) c.outcome().ordinal())
                    .putInt(c.partition())
                    .putLong(c.offset())
                    .putLong(c.eventTimeMs())
                    .array(),
            (topic, b) -> {
                if (b == null) {
                    return null;
                }
                ByteBuffer buf = ByteBuffer.wrap(b);
                return new CommandRecord(Ledger.Outcome.values()[buf.get()], buf.getInt(), buf.getLong(), buf.getLong());
            });

    /**
     * The two stores: persistent (RocksDB), with changelogs (the default; under
     * exactly_once_v2 they are written in the same transaction as the input offsets, which
     * is what makes the stores exactly-once). The accounts store is cached, as the DSL
     * would (10 000 hot keys: the cache folds the updates of a commit interval into one
     * write); the commands store is not, since each key is written once.
     */
    static StoreBuilder<KeyValueStore<String, Ledger.AccountState>> accountsStore() {
        return Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(ACCOUNTS), Serdes.String(), ACCOUNT_SERDE)
                .withCachingEnabled();
    }

    static StoreBuilder<KeyValueStore<String, CommandRecord>> commandsStore() {
        return Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(COMMANDS), Serdes.String(), COMMAND_SERDE)
                .withCachingDisabled();
    }

    private ProcessorContext<Void, Void> context;
    private KeyValueStore<String, Ledger.AccountState> accounts;
    private KeyValueStore<String, CommandRecord> commands;
    private final StoreState state = new StoreState();

    @Override
    public void init(ProcessorContext<Void, Void> context) {
        this.context = context;
        this.accounts = context.getStateStore(ACCOUNTS);
        this.commands = context.getStateStore(COMMANDS);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Envelope.Event event;
        try {
            event = Envelope.decode(record.value());
        } catch (Envelope.DecodeException e) {
            // The projector sends these to its dead-letter topic; the peer only counts
            // them (the bench's topic holds none).
            UNDECODABLE.computeIfAbsent(e.kind, k -> new LongAdder()).increment();
            return;
        }
        RecordMetadata meta = context.recordMetadata().orElseThrow();
        state.partition = meta.partition();
        state.offset = meta.offset();
        OUTCOMES.get(Ledger.apply(state, event)).increment();
    }

    /** The rules' view of this task's stores. */
    private final class StoreState implements Ledger.State {
        int partition;
        long offset;

        @Override
        public Ledger.AccountState account(String accountId) {
            return accounts.get(accountId);
        }

        @Override
        public void putAccount(String accountId, Ledger.AccountState s) {
            accounts.put(accountId, s);
        }

        @Override
        public boolean commandSeen(String accountId, String commandId) {
            return commands.get(accountId + SEP + commandId) != null;
        }

        @Override
        public void recordCommand(Envelope.Event event, Ledger.Outcome outcome) {
            commands.put(event.accountId() + SEP + event.commandId(),
                    new CommandRecord(outcome, partition, offset, event.timeMs()));
        }
    }
}
