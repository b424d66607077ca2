/**
 * Protocol Buffers wire format, the minimum needed to read ONNX models and splice fields
 * into them without re-encoding (so unknown and unread fields survive byte for byte).
 *
 * @module
 */

/** Wire types of the protobuf encoding. */
export const VARINT = 0, I64 = 1, LEN = 2, I32 = 5;

/** One field occurrence inside a message: tag at `start`, payload `[valueStart, end)`. */
export interface WireField {
  /** Field number. */
  field: number;
  /** Wire type (VARINT, I64, LEN, I32). */
  wireType: number;
  /** Offset of the tag. */
  start: number;
  /** Offset of the payload (after the tag and, for LEN, the length prefix). */
  valueStart: number;
  /** Offset just past the payload. */
  end: number;
  /** The decoded value of a VARINT field (int64 read as two's complement). */
  varint: number;
}

/** Thrown for bytes that are not a well-formed protobuf message. */
export class WireError extends Error {
  /** Describes the problem at byte offset `at`. */
  constructor(message: string, readonly at: number) {
    super(`${message} (at byte ${at})`);
    this.name = "WireError";
  }
}

/**
 * Reads a varint at `pos`; returns `[value, next]`. Values beyond 2^53 (only negative
 * int64s in practice) go through BigInt and are returned as the nearest double.
 */
export function readVarint(buf: Uint8Array, pos: number, end = buf.length): [number, number] {
  let result = 0;
  let mul = 1;
  for (let i = 0; i < 10; i++) {
    if (pos + i >= end) throw new WireError("truncated varint", pos);
    const b = buf[pos + i];
    if (i < 7) {
      result += (b & 0x7f) * mul;
      mul *= 128;
      if (b < 0x80) return [result, pos + i + 1];
    } else {
      // Bytes 8..10: finish in BigInt to keep the top bits and the sign.
      let big = BigInt(result);
      let shift = 49n;
      for (let j = i; j < 10; j++) {
        if (pos + j >= end) throw new WireError("truncated varint", pos);
        const bj = buf[pos + j];
        big |= BigInt(bj & 0x7f) << shift;
        shift += 7n;
        if (bj < 0x80) return [Number(BigInt.asIntN(64, big)), pos + j + 1];
      }
      throw new WireError("varint longer than 10 bytes", pos);
    }
  }
  throw new WireError("varint longer than 10 bytes", pos);
}

/** Iterates the fields of the message in `buf[start, end)`, in wire order. */
export function* fields(buf: Uint8Array, start = 0, end = buf.length): Generator<WireField> {
  let pos = start;
  while (pos < end) {
    const tagStart = pos;
    const [tag, afterTag] = readVarint(buf, pos, end);
    const field = Math.floor(tag / 8);
    const wireType = tag & 7;
    if (field === 0) throw new WireError("field number 0", tagStart);
    let valueStart = afterTag;
    let valueEnd: number;
    let varint = 0;
    switch (wireType) {
      case VARINT:
        [varint, valueEnd] = readVarint(buf, afterTag, end);
        break;
      case I64:
        valueEnd = afterTag + 8;
        break;
      case LEN: {
        const [len, afterLen] = readVarint(buf, afterTag, end);
        valueStart = afterLen;
        valueEnd = afterLen + len;
        break;
      }
      case I32:
        valueEnd = afterTag + 4;
        break;
      default:
        throw new WireError(`unsupported wire type ${wireType} for field ${field}`, tagStart);
    }
    if (valueEnd > end) {
      throw new WireError(`field ${field} runs past the end of its message`, tagStart);
    }
    yield { field, wireType, start: tagStart, valueStart, end: valueEnd, varint };
    pos = valueEnd;
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: false });
const utf8enc = new TextEncoder();

/** Decodes the payload of a LEN field as UTF-8 text. */
export function text(buf: Uint8Array, f: WireField): string {
  return utf8.decode(buf.subarray(f.valueStart, f.end));
}

/** Encodes a non-negative integer (< 2^53) as a varint. */
export function encodeVarint(value: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`varint: expected a non-negative safe integer, got ${value}`);
  }
  const out: number[] = [];
  while (value >= 0x80) {
    out.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return Uint8Array.from(out);
}

/** Encodes a LEN field: tag, length, payload. */
export function encodeLen(field: number, payload: Uint8Array): Uint8Array {
  return concat([encodeVarint(field * 8 + LEN), encodeVarint(payload.length), payload]);
}

/** Encodes a string field. */
export function encodeString(field: number, s: string): Uint8Array {
  return encodeLen(field, utf8enc.encode(s));
}

/** Concatenates byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}
