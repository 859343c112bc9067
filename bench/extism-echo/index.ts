// AssemblyScript echo for Extism, written against Extism's documented host imports (module "extism:host/env"):
// the function `echo` copies its input into a block of Extism's memory and sets it as the output. The
// equivalent of examples/plugins/echo for bench/plugins.ts. Compiled by the bench itself (no runtime, no abort).

@external("extism:host/env", "input_length") declare function input_length(): u64;
@external("extism:host/env", "input_load_u64") declare function input_load_u64(offset: u64): u64;
@external("extism:host/env", "input_load_u8") declare function input_load_u8(offset: u64): u8;
@external("extism:host/env", "alloc") declare function alloc(length: u64): u64;
@external("extism:host/env", "store_u64") declare function store_u64(offset: u64, value: u64): void;
@external("extism:host/env", "store_u8") declare function store_u8(offset: u64, value: u8): void;
@external("extism:host/env", "output_set") declare function output_set(offset: u64, length: u64): void;

export function echo(): i32 {
  const length = input_length();
  const block = alloc(length);
  let i: u64 = 0;
  for (; i + 8 <= length; i += 8) store_u64(block + i, input_load_u64(i));
  for (; i < length; i++) store_u8(block + i, input_load_u8(i));
  output_set(block, length);
  return 0;
}
