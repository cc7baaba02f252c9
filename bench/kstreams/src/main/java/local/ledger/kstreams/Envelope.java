// Envelope: decodes the ledger's event envelope (docs/api.md, section 5) in Java, so the
// Kafka Streams peer reads the very records the projector reads, not a friendlier copy.
package local.ledger.kstreams;

import java.nio.charset.StandardCharsets;
import java.util.UUID;

final class Envelope {
    static final int MAGIC = 0xEB;
    static final int VERSION_1 = 1;
    /** The Rust decoder's limit on what follows the two header bytes. */
    static final int MAX_PAYLOAD = 16 * 1024;
    static final long MAX_AMOUNT = 1_000_000_000_000L;
    static final int MAX_ACCOUNT_ID_LEN = 64;
    static final int MAX_COMMAND_ID_LEN = 128;

    /** The body's variant, numbered as the codec numbers it (by position). */
    enum Kind {
        OPEN_ACCOUNT,
        DEPOSIT,
        WITHDRAW
    }

    /**
     * One decoded event. {@code amount} is 0 for {@link Kind#OPEN_ACCOUNT}; otherwise it is
     * from 1 to {@link #MAX_AMOUNT}.
     */
    record Event(
            long eventIdHigh,
            long eventIdLow,
            String commandId,
            String accountId,
            long timeMs,
            Kind kind,
            long amount) {
        UUID eventId() {
            return new UUID(eventIdHigh, eventIdLow);
        }
    }

    /** Why bytes are not an event; {@code kind} is the Rust DecodeError's label. */
    static final class DecodeException extends Exception {
        private static final long serialVersionUID = 1L;
        final String kind;

        DecodeException(String kind, String message) {
            super(kind + ": " + message);
            this.kind = kind;
        }
    }

    private Envelope() {}

    static Event decode(byte[] b) throws DecodeException {
        if (b == null || b.length == 0) {
            throw new DecodeException("empty", "empty message value");
        }
        if ((b[0] & 0xff) != MAGIC) {
            throw new DecodeException("bad_magic", String.format("bad magic byte 0x%02x", b[0] & 0xff));
        }
        if (b.length < 2) {
            throw new DecodeException("malformed", "no version byte");
        }
        if ((b[1] & 0xff) != VERSION_1) {
            throw new DecodeException("unsupported_version", "unsupported envelope version " + (b[1] & 0xff));
        }
        if (b.length - 2 > MAX_PAYLOAD) {
            throw new DecodeException("malformed", "payload of " + (b.length - 2) + " bytes exceeds " + MAX_PAYLOAD);
        }
        Reader r = new Reader(b, 2);
        long[] id = r.u128();
        String commandId = r.id(MAX_COMMAND_ID_LEN, true, "command_id");
        String accountId = r.id(MAX_ACCOUNT_ID_LEN, false, "account_id");
        long z = r.unsigned(8);
        long timeMs = (z >>> 1) ^ -(z & 1);
        long variant = r.unsigned(4);
        Kind kind;
        long amount = 0;
        if (variant == 0) {
            kind = Kind.OPEN_ACCOUNT;
        } else if (variant == 1 || variant == 2) {
            kind = variant == 1 ? Kind.DEPOSIT : Kind.WITHDRAW;
            amount = r.unsigned(8);
            // Unsigned compare: a u64 past Long.MAX_VALUE reads as negative here.
            if (amount == 0 || Long.compareUnsigned(amount, MAX_AMOUNT) > 0) {
                throw new DecodeException("malformed", "amount " + Long.toUnsignedString(amount) + " is not from 1 to " + MAX_AMOUNT);
            }
        } else {
            // New variants are only ever added at the end: this is an event from a newer writer.
            throw new DecodeException("malformed", "unknown body variant " + Long.toUnsignedString(variant));
        }
        if (r.pos != b.length) {
            throw new DecodeException("malformed", (b.length - r.pos) + " trailing bytes after the event");
        }
        return new Event(id[0], id[1], commandId, accountId, timeMs, kind, amount);
    }

    /** bincode 2's "standard" varints, little endian, over one array. */
    private static final class Reader {
        private final byte[] b;
        int pos;

        Reader(byte[] b, int pos) {
            this.b = b;
            this.pos = pos;
        }

        private int next() throws DecodeException {
            if (pos >= b.length) {
                throw new DecodeException("malformed", "truncated at byte " + pos);
            }
            return b[pos++] & 0xff;
        }

        private long littleEndian(int width) throws DecodeException {
            if (b.length - pos < width) {
                throw new DecodeException("malformed", "truncated at byte " + pos);
            }
            long v = 0;
            for (int i = 0; i < width; i++) {
                v |= (long) (b[pos + i] & 0xff) << (8 * i);
            }
            pos += width;
            return v;
        }

        /** Width in bytes that a varint's first byte announces (0: the byte is the value). */
        private static int width(int first) {
            switch (first) {
                case 251:
                    return 2;
                case 252:
                    return 4;
                case 253:
                    return 8;
                case 254:
                    return 16;
                default:
                    return 0;
            }
        }

        /** An unsigned integer of at most {@code maxBytes} bytes (2, 4 or 8), as bincode reads a u16, u32 or u64. */
        long unsigned(int maxBytes) throws DecodeException {
            int first = next();
            if (first == 255) {
                throw new DecodeException("malformed", "invalid varint marker 0xff at byte " + (pos - 1));
            }
            int w = width(first);
            if (w == 0) {
                return first;
            }
            if (w > maxBytes) {
                throw new DecodeException("malformed", "a " + w + "-byte integer where at most " + maxBytes + " fit");
            }
            return littleEndian(w);
        }

        /** A u128 as {high, low} 64-bit halves, for the event id. */
        long[] u128() throws DecodeException {
            int first = next();
            if (first == 255) {
                throw new DecodeException("malformed", "invalid varint marker 0xff at byte " + (pos - 1));
            }
            int w = width(first);
            if (w == 0) {
                return new long[] {0, first};
            }
            if (w < 16) {
                return new long[] {0, littleEndian(w)};
            }
            long low = littleEndian(8);
            long high = littleEndian(8);
            return new long[] {high, low};
        }

        /**
         * A string that must be an id: 1 to {@code max} bytes of [A-Za-z0-9._-] (and ':' for
         * command ids). Being ASCII, it needs no further UTF-8 check.
         */
        String id(int max, boolean colon, String field) throws DecodeException {
            long n = unsigned(8);
            if (n < 1 || n > max) {
                throw new DecodeException("malformed", field + " of length " + Long.toUnsignedString(n) + " is not from 1 to " + max);
            }
            int len = (int) n;
            if (b.length - pos < len) {
                throw new DecodeException("malformed", "truncated " + field);
            }
            for (int i = pos; i < pos + len; i++) {
                int c = b[i] & 0xff;
                boolean ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                        || c == '.' || c == '_' || c == '-' || (colon && c == ':');
                if (!ok) {
                    throw new DecodeException("malformed", field + " has a character outside its rules at byte " + i);
                }
            }
            String s = new String(b, pos, len, StandardCharsets.US_ASCII);
            pos += len;
            return s;
        }
    }

    /** Bytes from hex, spaces allowed (the test vector is spelled with them). */
    static byte[] hex(String s) {
        String h = s.replaceAll("\\s+", "");
        if (h.length() % 2 != 0) {
            throw new IllegalArgumentException("odd number of hex digits");
        }
        byte[] out = new byte[h.length() / 2];
        for (int i = 0; i < out.length; i++) {
            out[i] = (byte) Integer.parseInt(h.substring(2 * i, 2 * i + 2), 16);
        }
        return out;
    }
}
