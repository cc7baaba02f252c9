// Ledger: the ledger's rules in Java, a transcription of crates/ledger-domain (rules.rs for
// what one event does to an account, model.rs for the command-id dedupe), kept free of
// Kafka so the self-test can check them without a broker.
package local.ledger.kstreams;

final class Ledger {
    private Ledger() {}

    /** One account as the projection holds it; {@code null} stands for "never seen". */
    record AccountState(boolean open, long balance, long appliedEvents) {}

    /** Why an event changed nothing; {@code code} is the contract's reason. */
    enum Rejection {
        ACCOUNT_ALREADY_OPEN("account_already_open"),
        ACCOUNT_NOT_OPEN("account_not_open"),
        INSUFFICIENT_FUNDS("insufficient_funds"),
        BALANCE_OVERFLOW("balance_overflow");

        final String code;

        Rejection(String code) {
            this.code = code;
        }
    }

    /** What applying one event did. */
    enum Outcome {
        APPLIED(null),
        ACCOUNT_ALREADY_OPEN(Rejection.ACCOUNT_ALREADY_OPEN),
        ACCOUNT_NOT_OPEN(Rejection.ACCOUNT_NOT_OPEN),
        INSUFFICIENT_FUNDS(Rejection.INSUFFICIENT_FUNDS),
        BALANCE_OVERFLOW(Rejection.BALANCE_OVERFLOW),
        /** The command id was seen before on this account: nothing changed. */
        DUPLICATE(null);

        final Rejection rejection;

        Outcome(Rejection rejection) {
            this.rejection = rejection;
        }

        static Outcome of(Rejection r) {
            return switch (r) {
                case ACCOUNT_ALREADY_OPEN -> ACCOUNT_ALREADY_OPEN;
                case ACCOUNT_NOT_OPEN -> ACCOUNT_NOT_OPEN;
                case INSUFFICIENT_FUNDS -> INSUFFICIENT_FUNDS;
                case BALANCE_OVERFLOW -> BALANCE_OVERFLOW;
            };
        }
    }

    /** The new state, or the rejection; exactly one is set. */
    record Decision(AccountState next, Rejection rejection) {}

    /** rules.rs's decide: the account's next state, or why the event changes nothing. */
    static Decision decide(AccountState state, Envelope.Kind kind, long amount) {
        boolean open = state != null && state.open();
        long applied = state == null ? 0 : state.appliedEvents();
        switch (kind) {
            case OPEN_ACCOUNT:
                if (open) {
                    return new Decision(null, Rejection.ACCOUNT_ALREADY_OPEN);
                }
                // An account that was never opened may still carry a count (it cannot
                // today, but decide keeps it, so this does too).
                return new Decision(new AccountState(true, 0, applied + 1), null);
            case DEPOSIT:
                if (!open) {
                    return new Decision(null, Rejection.ACCOUNT_NOT_OPEN);
                }
                // amount is at most 10^12 after decoding, but decide does not rely on that.
                if (amount < 0) {
                    return new Decision(null, Rejection.BALANCE_OVERFLOW);
                }
                long sum = state.balance() + amount;
                if (((state.balance() ^ sum) & (amount ^ sum)) < 0) {
                    return new Decision(null, Rejection.BALANCE_OVERFLOW);
                }
                return new Decision(new AccountState(true, sum, applied + 1), null);
            case WITHDRAW:
                if (!open) {
                    return new Decision(null, Rejection.ACCOUNT_NOT_OPEN);
                }
                if (amount < 0 || state.balance() < amount) {
                    return new Decision(null, Rejection.INSUFFICIENT_FUNDS);
                }
                return new Decision(new AccountState(true, state.balance() - amount, applied + 1), null);
            default:
                throw new IllegalArgumentException("unknown kind " + kind);
        }
    }

    /**
     * What {@link #apply} reads and writes: the processor's two stores, or maps in the
     * self-test (model.rs's LedgerState).
     */
    interface State {
        AccountState account(String accountId);

        void putAccount(String accountId, AccountState state);

        /** Whether this account has an outcome recorded under this command id. */
        boolean commandSeen(String accountId, String commandId);

        /** Records the first outcome of a command id on an account. */
        void recordCommand(Envelope.Event event, Outcome outcome);
    }

    /**
     * model.rs's apply_event: a command id already seen for the same account changes
     * nothing; otherwise the rules decide, and the outcome is recorded under the id, so a
     * retried command keeps its first outcome even if it would now succeed.
     */
    static Outcome apply(State state, Envelope.Event event) {
        if (state.commandSeen(event.accountId(), event.commandId())) {
            return Outcome.DUPLICATE;
        }
        Decision d = decide(state.account(event.accountId()), event.kind(), event.amount());
        Outcome outcome;
        if (d.next() != null) {
            state.putAccount(event.accountId(), d.next());
            outcome = Outcome.APPLIED;
        } else {
            outcome = Outcome.of(d.rejection());
        }
        state.recordCommand(event, outcome);
        return outcome;
    }
}
