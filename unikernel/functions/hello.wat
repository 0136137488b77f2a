;; hello: an OpenWhisk action as a WASI command.
;;
;; argv[1] is the run's parameters as one JSON object; the last line written to stdout is the
;; result. Prints a log line, then {"greeting":"Hello <name>"} with <name> the string parameter
;; "name", or "stranger" when there is none.
;;
;; The JSON is read minimally: the first key "name" whose value is a string, wherever it is;
;; the string's escapes are copied as they are, so the output stays valid JSON.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))

  ;; 0..16: an iovec and the written count; 16..24: argc and the argument bytes; 32..40: the
  ;; name found; 64..: argv pointers; 1024..: constants; $args..: the argument strings, then
  ;; the output.
  (memory (export "memory") 1)
  (global $args i32 (i32.const 16384))
  (data (i32.const 1024) "\22name\22")                   ;; 6 bytes
  (data (i32.const 1040) "{\22greeting\22:\22Hello ")      ;; 19 bytes
  (data (i32.const 1072) "stranger")                      ;; 8 bytes
  (data (i32.const 1088) "\22}\0a")                       ;; 3 bytes
  (data (i32.const 1104) "hello: composing a greeting\0a") ;; 28 bytes

  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $copy (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func $is_space (param $c i32) (result i32)
    (i32.or
      (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
      (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))))

  ;; Whether the 6 bytes at $p are "name" with its quotes.
  (func $is_key (param $p i32) (result i32) (local $i i32)
    (block $no
      (loop $next
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i)))
                           (i32.load8_u (i32.add (i32.const 1024) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $i) (i32.const 6)))
        (return (i32.const 1))))
    (i32.const 0))

  ;; Finds the value of "name" in the JSON at $json ($len bytes): stores its start at 32 and its
  ;; length at 36 and returns 1, or returns 0.
  (func $find_name (param $json i32) (param $len i32) (result i32)
    (local $i i32) (local $end i32) (local $p i32) (local $c i32) (local $start i32)
    (local.set $end (i32.add (local.get $json) (local.get $len)))
    (local.set $p (local.get $json))
    (block $none
      (loop $scan
        (br_if $none (i32.gt_u (i32.add (local.get $p) (i32.const 6)) (local.get $end)))
        (block $miss
          (br_if $miss (i32.eqz (call $is_key (local.get $p))))
          ;; After the key: spaces, a colon, spaces, a quote.
          (local.set $i (i32.add (local.get $p) (i32.const 6)))
          (block $colon
            (loop $ws1
              (br_if $miss (i32.ge_u (local.get $i) (local.get $end)))
              (local.set $c (i32.load8_u (local.get $i)))
              (br_if $colon (i32.eq (local.get $c) (i32.const 58)))
              (br_if $miss (i32.eqz (call $is_space (local.get $c))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $ws1)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (block $quote
            (loop $ws2
              (br_if $miss (i32.ge_u (local.get $i) (local.get $end)))
              (local.set $c (i32.load8_u (local.get $i)))
              (br_if $quote (i32.eq (local.get $c) (i32.const 34)))
              (br_if $miss (i32.eqz (call $is_space (local.get $c))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $ws2)))
          ;; The string: up to the next quote that is not escaped.
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (local.set $start (local.get $i))
          (loop $chars
            (br_if $miss (i32.ge_u (local.get $i) (local.get $end)))
            (local.set $c (i32.load8_u (local.get $i)))
            (if (i32.eq (local.get $c) (i32.const 34))
              (then
                (i32.store (i32.const 32) (local.get $start))
                (i32.store (i32.const 36) (i32.sub (local.get $i) (local.get $start)))
                (return (i32.const 1))))
            (if (i32.eq (local.get $c) (i32.const 92))
              (then (local.set $i (i32.add (local.get $i) (i32.const 1)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $chars)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  ;; Grows the memory to at least $bytes bytes; returns 0 when it cannot.
  (func $reserve (param $bytes i32) (result i32) (local $pages i32)
    (local.set $pages (i32.add (i32.shr_u (local.get $bytes) (i32.const 16)) (i32.const 1)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (return (i32.ne (memory.grow (i32.sub (local.get $pages) (memory.size)))
                        (i32.const -1)))))
    (i32.const 1))

  (func (export "_start") (local $json i32) (local $size i32) (local $out i32) (local $n i32)
    (call $print (i32.const 1104) (i32.const 28))
    ;; Defaults: "stranger".
    (i32.store (i32.const 32) (i32.const 1072))
    (i32.store (i32.const 36) (i32.const 8))
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $size (i32.load (i32.const 20)))
    ;; argv[1] exists, its pointers fit below the constants, and there is room for the
    ;; argument strings and for an output as long as them (it repeats at most all of them).
    (if (i32.and
          (i32.and (i32.ge_u (i32.load (i32.const 16)) (i32.const 2))
                   (i32.le_u (i32.load (i32.const 16)) (i32.const 200)))
          (i32.and (i32.lt_u (local.get $size) (i32.const 0x20000000))
                   (call $reserve (i32.add (i32.add (global.get $args) (i32.const 64))
                                           (i32.shl (local.get $size) (i32.const 1))))))
      (then
        (drop (call $args_get (i32.const 64) (global.get $args)))
        (local.set $json (i32.load (i32.const 68)))
        (drop (call $find_name (local.get $json) (call $strlen (local.get $json))))))
    (local.set $n (i32.load (i32.const 36)))
    (local.set $out (i32.add (global.get $args) (local.get $size)))
    (local.set $out (call $copy (local.get $out) (i32.const 1040) (i32.const 19)))
    (local.set $out (call $copy (local.get $out) (i32.load (i32.const 32)) (local.get $n)))
    (local.set $out (call $copy (local.get $out) (i32.const 1088) (i32.const 3)))
    (call $print (i32.add (global.get $args) (local.get $size))
                 (i32.sub (local.get $out) (i32.add (global.get $args) (local.get $size))))))
