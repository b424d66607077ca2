/**
 * JSON with `//` and `/* *\/` comments and trailing commas, parsed by `jsonc-parser` (the
 * parser VS Code uses for its settings files); errors name the line and column.
 *
 * @module
 */
// A fully qualified specifier: the toolkit also works when imported by URL, without its
// deno.json import map.
// deno-lint-ignore no-import-prefix
import { parse, type ParseError, printParseErrorCode } from "npm:jsonc-parser@3.3.1";

const WHAT: Partial<Record<ReturnType<typeof printParseErrorCode>, string>> = {
  InvalidSymbol: "unexpected character",
  InvalidNumberFormat: "invalid number",
  PropertyNameExpected: "expected a property name in double quotes",
  ValueExpected: "expected a value",
  ColonExpected: "expected ':' after the property name",
  CommaExpected: "expected ',' or the end of the object or list",
  CloseBraceExpected: "expected '}'",
  CloseBracketExpected: "expected ']'",
  EndOfFileExpected: "unexpected text after the value",
  InvalidCommentToken: "invalid comment",
  UnexpectedEndOfComment: "unterminated /* comment",
  UnexpectedEndOfString: "unterminated string",
  UnexpectedEndOfNumber: "unterminated number",
  InvalidUnicode: "invalid \\u escape",
  InvalidEscapeCharacter: "invalid escape character",
  InvalidCharacter: "invalid character in a string",
};

/** `line L, column C` (both 1-based) of UTF-16 offset `pos` in `text`. */
export function lineCol(text: string, pos: number): string {
  const before = text.slice(0, pos);
  const line = before.split("\n").length;
  const col = pos - before.lastIndexOf("\n");
  return `line ${line}, column ${col}`;
}

/**
 * Parses JSONC text.
 *
 * @throws SyntaxError `invalid JSON at line L, column C: what` for the first problem.
 */
export function parseJsonc(text: string): unknown {
  const errors: ParseError[] = [];
  const value = parse(text, errors, {
    allowTrailingComma: true,
    disallowComments: false,
    allowEmptyContent: false,
  });
  if (errors.length > 0) {
    const { error, offset } = errors[0];
    const what = WHAT[printParseErrorCode(error)] ?? `syntax error ${error}`;
    throw new SyntaxError(`invalid JSON at ${lineCol(text, offset)}: ${what}`);
  }
  return value;
}
