// Lets tsc compile assembly/layout.ts, which is shared with asc: AssemblyScript's integer types are plain
// numbers on the host side (as in AssemblyScript's own std/portable).
declare type u32 = number;
declare type i32 = number;
