// wordcount: counts the words of the text it receives and keeps running totals.
//   request  "some text"  (or { text: "some text" })  →  reply { words, total, texts }
//   message  "some text"                               →  no reply
// After each text it publishes the running totals { total, texts } on the topic "wordcount.totals".
// A word is a run of characters that are not whitespace (space, tab, CR, LF, FF, VT, NBSP, and U+2000-U+200A,
// U+2028, U+2029, U+3000).
import { onRequest, onMessage, Incoming, Value, Kind, publish, log, GUEST_LOG_WARN } from '../../../assembly/guest';

export * from '../../../assembly/guest/exports';

const TOPIC = 'wordcount.totals';

let total: u64 = 0;
let texts: u64 = 0;

function isSpace(c: i32): bool {
  return c == 0x20 || (c >= 0x09 && c <= 0x0d) || c == 0xa0 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x3000 || c == 0x1680 || c == 0x205f;
}

function countWords(text: string): u64 {
  let words: u64 = 0;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const space = isSpace(text.charCodeAt(i));
    if (!space && !inWord) words++;
    inWord = !space;
  }
  return words;
}

/** The text a value carries: a string, or a map's "text" string; null otherwise. */
function textOf(v: Value): string | null {
  if (v.kind == Kind.String) return v.text;
  const t = v.get('text');
  return t != null && t.kind == Kind.String ? t.text : null;
}

function count(text: string): u64 {
  const words = countWords(text);
  total += words;
  texts++;
  publish(TOPIC, Value.map().set('total', Value.uint(total)).set('texts', Value.uint(texts)));
  return words;
}

onRequest((req: Incoming): Value | null => {
  const text = textOf(req.value);
  if (text == null) return Value.map().set('error', Value.string('expected a string or { text: string }'));
  const words = count(text);
  return Value.map().set('words', Value.uint(words)).set('total', Value.uint(total)).set('texts', Value.uint(texts));
});

onMessage((msg: Incoming): void => {
  const text = textOf(msg.value);
  if (text == null) {
    log('wordcount: a message without text was ignored', GUEST_LOG_WARN);
    return;
  }
  count(text);
});
