/**
 * Strict checks of a parsed JSON request: an object with only known fields, each of the
 * right type and in range. Every failure is a `KnnError` `E_USAGE` whose `key` is the field
 * and whose message says what was expected and what was found.
 *
 * @module
 */

import { KnnError } from "../core/mod.ts";
import { closest } from "../core/_suggest.ts";

/** The error for a bad request field: `field: message`, with the field as the error's key. */
export function fieldError(field: string, message: string): KnnError {
  return new KnnError("E_USAGE", `${field}: ${message}`, { key: field });
}

/** A JSON value named for an error message: `string "abc…"`, `array`, `null`, `number 1.5`. */
export function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  switch (typeof v) {
    case "string":
      return `string ${JSON.stringify(v.length > 20 ? v.slice(0, 20) + "…" : v)}`;
    case "number":
      return `number ${v}`;
    case "boolean":
      return `boolean ${v}`;
    default:
      return typeof v;
  }
}

/** The request body as an object with no field outside `allowed`. */
export function requestObject(body: unknown, allowed: readonly string[]): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw fieldError("body", `expected a JSON object, found ${describe(body)}`);
  }
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) {
      const near = closest(key, allowed);
      throw fieldError(
        key,
        `unknown field${near ? ` (did you mean '${near}'?)` : ""}; expected ${allowed.join(", ")}`,
      );
    }
  }
  return body as Record<string, unknown>;
}

/** An optional integer field in [min, max]. */
export function optInteger(
  o: Record<string, unknown>,
  field: string,
  min: number,
  max: number,
): number | undefined {
  const v = o[field];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw fieldError(field, `expected an integer in ${min}..${max}, found ${describe(v)}`);
  }
  if (v < min || v > max) {
    throw fieldError(field, `expected an integer in ${min}..${max}, found ${v}`);
  }
  return v;
}

/** Range of a number field: inclusive `min`/`max`, or `min` exclusive with `openMin`. */
export interface NumberRange {
  /** Lower bound. */
  min: number;
  /** Upper bound (inclusive). */
  max: number;
  /** Whether `min` itself is excluded. */
  openMin?: boolean;
}

function rangeText(r: NumberRange): string {
  return r.openMin ? `a number > ${r.min} and ≤ ${r.max}` : `a number in [${r.min}, ${r.max}]`;
}

function checkNumber(field: string, v: unknown, r: NumberRange): number {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw fieldError(field, `expected ${rangeText(r)}, found ${describe(v)}`);
  }
  if ((r.openMin ? v <= r.min : v < r.min) || v > r.max) {
    throw fieldError(field, `expected ${rangeText(r)}, found ${v}`);
  }
  return v;
}

/** An optional number field in range. */
export function optNumber(
  o: Record<string, unknown>,
  field: string,
  r: NumberRange,
): number | undefined {
  return o[field] === undefined ? undefined : checkNumber(field, o[field], r);
}

/** An optional non-empty array of numbers in range, at most `maxLength` long. */
export function optNumberArray(
  o: Record<string, unknown>,
  field: string,
  r: NumberRange,
  maxLength: number,
): number[] | undefined {
  const v = o[field];
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) {
    throw fieldError(field, `expected an array of numbers, found ${describe(v)}`);
  }
  if (v.length < 1 || v.length > maxLength) {
    throw fieldError(field, `expected 1..${maxLength} values, found ${v.length}`);
  }
  return v.map((x, i) => checkNumber(`${field}[${i}]`, x, r));
}

/**
 * The tokens of a request: exactly one of `text` (a string, tokenized by `encode`) or `ids`
 * (an array of token ids below `vocabSize`), with `minTokens..maxTokens` tokens.
 */
export function requestTokens(
  o: Record<string, unknown>,
  opts: {
    minTokens: number;
    maxTokens: number;
    vocabSize: number;
    encode: (text: string) => Int32Array;
  },
): Int32Array {
  const { minTokens, maxTokens } = opts;
  const count = `${minTokens}..${maxTokens} tokens`;
  if (o.text !== undefined && o.ids !== undefined) {
    throw fieldError("ids", "give text or ids, not both");
  }
  if (o.text === undefined && o.ids === undefined) {
    throw fieldError("text", "required (or ids): the text to look at");
  }
  let tokens: Int32Array;
  if (o.text !== undefined) {
    const text = o.text;
    if (typeof text !== "string") {
      throw fieldError("text", `expected a string, found ${describe(text)}`);
    }
    // A string of n UTF-16 units encodes to at least n / 2 tokens: refuse huge ones unencoded.
    if (text.length > 2 * maxTokens) {
      throw fieldError("text", `expected ${count}, found ${text.length} characters`);
    }
    tokens = opts.encode(text);
    if (tokens.length < minTokens || tokens.length > maxTokens) {
      throw fieldError("text", `expected ${count}, found ${tokens.length}`);
    }
    return tokens;
  }
  const ids = o.ids;
  if (!Array.isArray(ids)) {
    throw fieldError("ids", `expected an array of token ids, found ${describe(ids)}`);
  }
  if (ids.length < minTokens || ids.length > maxTokens) {
    throw fieldError("ids", `expected ${count}, found ${ids.length}`);
  }
  tokens = new Int32Array(ids.length);
  ids.forEach((id, i) => {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= opts.vocabSize) {
      throw fieldError(
        `ids[${i}]`,
        `expected a token id in 0..${opts.vocabSize - 1}, found ${describe(id)}`,
      );
    }
    tokens[i] = id;
  });
  return tokens;
}
