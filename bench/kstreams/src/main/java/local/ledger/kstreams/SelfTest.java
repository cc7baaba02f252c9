// SelfTest: the peer's --self-test, run by scripts/bench.sh before the peer is timed. It
// checks the Java decoder against the envelope's test vector (docs/api.md, section 5;
// TEST_VECTOR_HEX in crates/ledger-eventlog/src/codec.rs, and the Rust encoder's own bytes
// when bench.sh passes them with --vector) and the Java rules against the examples of
// crates/ledger-domain's tests, so a peer that is fast because it is wrong cannot be timed.
package local.ledger.kstreams;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

final class SelfTest {
    /** The test vector as docs/api.md spells it out. */
    static final String TEST_VECTOR_HEX =
            "eb 01 fe bc9a78563412f08ecd7b9a7856349201 04 632d3432 05 6163632d31 fd 0050b5ed36030000 02 fb 2c01";

    private final List<String> failures = new ArrayList<>();
    private int passed;

    private SelfTest() {}

    private void check(boolean ok, String what) {
        if (ok) {
            passed++;
        } else {
            failures.add(what);
        }
    }

    private void eq(Object got, Object want, String what) {
        check(java.util.Objects.equals(got, want), what + ": got " + got + ", want " + want);
    }

    private Envelope.Event decodes(String hex, String what) {
        try {
            Envelope.Event e = Envelope.decode(Envelope.hex(hex));
            passed++;
            return e;
        } catch (Envelope.DecodeException e) {
            failures.add(what + ": " + e.getMessage());
            return null;
        }
    }

    private void refuses(byte[] bytes, String kind, String what) {
        try {
            Envelope.decode(bytes);
            failures.add(what + ": decoded, expected " + kind);
        } catch (Envelope.DecodeException e) {
            eq(e.kind, kind, what);
        }
    }

    private void refuses(String hex, String kind, String what) {
        refuses(Envelope.hex(hex), kind, what);
    }

    private void testVector(String hex, String source) {
        Envelope.Event e = decodes(hex, "the test vector (" + source + ") decodes");
        if (e == null) {
            return;
        }
        eq(e.eventId().toString(), "01923456-789a-7bcd-8ef0-123456789abc", source + ": event_id");
        eq(e.commandId(), "c-42", source + ": command_id");
        eq(e.accountId(), "acc-1", source + ": account_id");
        eq(e.timeMs(), 1_767_225_600_000L, source + ": time_ms");
        eq(e.kind(), Envelope.Kind.WITHDRAW, source + ": body");
        eq(e.amount(), 300L, source + ": amount");
    }

    private void decoder(String vectorFromRust) {
        testVector(TEST_VECTOR_HEX, "docs/api.md");
        if (vectorFromRust != null) {
            check(Arrays.equals(Envelope.hex(vectorFromRust), Envelope.hex(TEST_VECTOR_HEX)),
                    "the Rust encoder's bytes for the test vector differ from docs/api.md's: the format changed");
            testVector(vectorFromRust, "the Rust encoder");
        }
        // The other two bodies, and the smallest forms of every field.
        Envelope.Event open = decodes("eb01 00 0163 0161 00 00", "a minimal open_account decodes");
        if (open != null) {
            eq(open.kind(), Envelope.Kind.OPEN_ACCOUNT, "open_account body");
            eq(open.eventId().toString(), "00000000-0000-0000-0000-000000000000", "event_id 0");
        }
        Envelope.Event dep = decodes("eb01 00 0163 0161 03 01 fc 00e87648", "a deposit decodes");
        if (dep != null) {
            eq(dep.kind(), Envelope.Kind.DEPOSIT, "deposit body");
            eq(dep.amount(), 1_215_752_192L, "u32 amount");
            eq(dep.timeMs(), -2L, "zigzag 3 is -2");
        }
        Envelope.Event max = decodes("eb01 00 0163 0161 00 01 fd 0010a5d4e8000000", "a deposit of 10^12 decodes");
        if (max != null) {
            eq(max.amount(), Envelope.MAX_AMOUNT, "the largest amount");
        }
        byte[] vector = Envelope.hex(TEST_VECTOR_HEX);
        refuses(new byte[0], "empty", "no bytes");
        refuses("00", "bad_magic", "another magic byte");
        refuses("eb", "malformed", "no version byte");
        refuses("eb02", "unsupported_version", "version 2");
        refuses(Arrays.copyOf(vector, vector.length - 1), "malformed", "a truncated amount");
        refuses(Arrays.copyOf(vector, vector.length + 1), "malformed", "a trailing byte");
        refuses("eb01 00 0163 0161 00 02 00", "malformed", "an amount of 0");
        refuses("eb01 00 0163 0161 00 01 fd 0110a5d4e8000000", "malformed", "an amount past 10^12");
        refuses("eb01 00 0163 0161 00 01 fd ffffffffffffffff", "malformed", "an amount of 2^64-1");
        refuses("eb01 00 0163 0161 00 03", "malformed", "an unknown body variant");
        refuses("eb01 00 0163 052f63632d31 00 00", "malformed", "a '/' in account_id");
        refuses("eb01 00 0163 053a63632d31 00 00", "malformed", "a ':' in account_id");
        refuses("eb01 00 00 0161 00 00", "malformed", "an empty command_id");
        refuses("eb01 00 0163 0161 00 ff", "malformed", "the invalid varint marker 0xff");
        refuses("eb01 00 0163 0161 fe 00000000000000000000000000000000 00", "malformed", "a u128 where a u64 fits");
    }

    private static Envelope.Event event(String command, String account, Envelope.Kind kind, long amount) {
        return new Envelope.Event(0, 0, command, account, 0, kind, amount);
    }

    /** The rules alone: rules.rs's tests. */
    private void rules() {
        Ledger.AccountState s = Ledger.decide(null, Envelope.Kind.OPEN_ACCOUNT, 0).next();
        s = Ledger.decide(s, Envelope.Kind.DEPOSIT, 1250).next();
        s = Ledger.decide(s, Envelope.Kind.WITHDRAW, 300).next();
        eq(s, new Ledger.AccountState(true, 950, 3), "the contract example");
        eq(Ledger.decide(null, Envelope.Kind.DEPOSIT, 1).rejection(), Ledger.Rejection.ACCOUNT_NOT_OPEN, "deposit before open");
        eq(Ledger.decide(null, Envelope.Kind.WITHDRAW, 1).rejection(), Ledger.Rejection.ACCOUNT_NOT_OPEN, "withdraw before open");
        Ledger.AccountState opened = Ledger.decide(null, Envelope.Kind.OPEN_ACCOUNT, 0).next();
        eq(Ledger.decide(opened, Envelope.Kind.OPEN_ACCOUNT, 0).rejection(), Ledger.Rejection.ACCOUNT_ALREADY_OPEN, "open twice");
        eq(Ledger.decide(opened, Envelope.Kind.WITHDRAW, 1).rejection(), Ledger.Rejection.INSUFFICIENT_FUNDS, "overdraft");
        Ledger.AccountState rich = new Ledger.AccountState(true, Long.MAX_VALUE - 5, 1);
        eq(Ledger.decide(rich, Envelope.Kind.DEPOSIT, 6).rejection(), Ledger.Rejection.BALANCE_OVERFLOW, "overflow");
        eq(Ledger.decide(rich, Envelope.Kind.DEPOSIT, 5).next().balance(), Long.MAX_VALUE, "up to i64::MAX");
        Ledger.AccountState ten = Ledger.decide(opened, Envelope.Kind.DEPOSIT, 10).next();
        eq(Ledger.decide(ten, Envelope.Kind.WITHDRAW, 10).next().balance(), 0L, "withdrawing everything leaves zero");
        eq(Ledger.decide(ten, Envelope.Kind.WITHDRAW, 10).next().appliedEvents(), 3L, "applied events count");
    }

    /** Ledger.State over maps, as model.rs's Model. */
    private static final class MapState implements Ledger.State {
        final Map<String, Ledger.AccountState> accounts = new HashMap<>();
        final Map<String, Ledger.Outcome> commands = new HashMap<>();

        @Override
        public Ledger.AccountState account(String accountId) {
            return accounts.get(accountId);
        }

        @Override
        public void putAccount(String accountId, Ledger.AccountState state) {
            accounts.put(accountId, state);
        }

        @Override
        public boolean commandSeen(String accountId, String commandId) {
            return commands.containsKey(accountId + LedgerProcessor.SEP + commandId);
        }

        @Override
        public void recordCommand(Envelope.Event event, Ledger.Outcome outcome) {
            commands.put(event.accountId() + LedgerProcessor.SEP + event.commandId(), outcome);
        }
    }

    /** The dedupe: model.rs's test, and its scope (one account). */
    private void dedupe() {
        MapState m = new MapState();
        eq(Ledger.apply(m, event("c1", "a", Envelope.Kind.OPEN_ACCOUNT, 0)), Ledger.Outcome.APPLIED, "open a");
        eq(Ledger.apply(m, event("c2", "a", Envelope.Kind.WITHDRAW, 5)), Ledger.Outcome.INSUFFICIENT_FUNDS, "overdraft on a");
        eq(Ledger.apply(m, event("c3", "a", Envelope.Kind.DEPOSIT, 50)), Ledger.Outcome.APPLIED, "deposit on a");
        // The retried withdrawal would now succeed, but its command id was decided already.
        eq(Ledger.apply(m, event("c2", "a", Envelope.Kind.WITHDRAW, 5)), Ledger.Outcome.DUPLICATE, "retried command id");
        eq(m.accounts.get("a").balance(), 50L, "a duplicate changes nothing");
        eq(m.accounts.get("a").appliedEvents(), 2L, "a duplicate is not counted as applied");
        eq(m.commands.get("a/c2"), Ledger.Outcome.INSUFFICIENT_FUNDS, "the first outcome stands");
        // The same command id on another account is another command.
        eq(Ledger.apply(m, event("c1", "b", Envelope.Kind.OPEN_ACCOUNT, 0)), Ledger.Outcome.APPLIED, "c1 on b is not a duplicate");
        eq(Ledger.apply(m, event("c3", "b", Envelope.Kind.DEPOSIT, 7)), Ledger.Outcome.APPLIED, "c3 on b is not a duplicate");
        eq(m.accounts.get("b"), new Ledger.AccountState(true, 7, 2), "b's state");
    }

    /** The stores' value formats, and that the topology wires both stores to the processor. */
    private void plumbing() {
        Ledger.AccountState s = new Ledger.AccountState(true, Long.MAX_VALUE, 42);
        byte[] b = LedgerProcessor.ACCOUNT_SERDE.serializer().serialize("t", s);
        eq(LedgerProcessor.ACCOUNT_SERDE.deserializer().deserialize("t", b), s, "account state round trip");
        LedgerProcessor.CommandRecord c = new LedgerProcessor.CommandRecord(Ledger.Outcome.BALANCE_OVERFLOW, 5, 1L << 40, -3);
        byte[] cb = LedgerProcessor.COMMAND_SERDE.serializer().serialize("t", c);
        eq(LedgerProcessor.COMMAND_SERDE.deserializer().deserialize("t", cb), c, "command record round trip");
        String topo = KStreamsPeer.topology("t").describe().toString();
        check(topo.contains("stores: [" + LedgerProcessor.ACCOUNTS + ", " + LedgerProcessor.COMMANDS + "]")
                        || topo.contains("stores: [" + LedgerProcessor.COMMANDS + ", " + LedgerProcessor.ACCOUNTS + "]"),
                "the processor has both stores:\n" + topo);
    }

    static int run(String vectorFromRust) {
        SelfTest t = new SelfTest();
        t.decoder(vectorFromRust);
        t.rules();
        t.dedupe();
        t.plumbing();
        for (String f : t.failures) {
            System.err.println("kstreams-peer self-test: FAILED " + f);
        }
        System.out.println("kstreams-peer self-test: " + t.passed + " passed, " + t.failures.size() + " failed");
        return t.failures.isEmpty() ? 0 : 1;
    }
}
