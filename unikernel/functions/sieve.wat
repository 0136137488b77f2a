;; sieve: counts the primes up to n with the sieve of Eratosthenes, like the benchmark's
;; JavaScript action (bench/src/coldstart.rs, SIEVE), and prints {"primes":<count>}.
;;
;; n is the parameter "n" of the JSON object in argv[1]: the first key "n" followed by a
;; non-negative integer; 20000 when there is none or it is 0 (JavaScript's `p.n || 20000`).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))

  ;; 0..16: an iovec and the written count; 16..24: argc and the argument bytes; 64..: argv
  ;; pointers; 1024..: constants; 2048..: the output; 4096..: the argument strings, then the
  ;; sieve's bytes.
  (memory (export "memory") 1)
  (global $args i32 (i32.const 4096))
  (data (i32.const 1024) "\22n\22")           ;; 3 bytes
  (data (i32.const 1040) "{\22primes\22:")    ;; 10 bytes

  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $is_space (param $c i32) (result i32)
    (i32.or
      (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
      (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))))

  (func $is_digit (param $c i32) (result i32)
    (i32.lt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 10)))

  ;; The integer after the key "n" in the $len bytes of JSON at $p, or 0.
  (func $find_n (param $p i32) (param $len i32) (result i32)
    (local $end i32) (local $i i32) (local $c i32) (local $n i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $none
      (loop $scan
        (br_if $none (i32.gt_u (i32.add (local.get $p) (i32.const 3)) (local.get $end)))
        (block $miss
          (br_if $miss (i32.ne (i32.load16_u (local.get $p)) (i32.load16_u (i32.const 1024))))
          (br_if $miss (i32.ne (i32.load8_u offset=2 (local.get $p)) (i32.const 34)))
          (local.set $i (i32.add (local.get $p) (i32.const 3)))
          (block $colon
            (loop $ws1
              (br_if $miss (i32.ge_u (local.get $i) (local.get $end)))
              (local.set $c (i32.load8_u (local.get $i)))
              (br_if $colon (i32.eq (local.get $c) (i32.const 58)))
              (br_if $miss (i32.eqz (call $is_space (local.get $c))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $ws1)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (block $number
            (loop $ws2
              (br_if $miss (i32.ge_u (local.get $i) (local.get $end)))
              (local.set $c (i32.load8_u (local.get $i)))
              (br_if $number (call $is_digit (local.get $c)))
              (br_if $miss (i32.eqz (call $is_space (local.get $c))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $ws2)))
          ;; Digits, saturating at 2^30 (the sieve could not get that much memory anyway).
          (loop $digits
            (if (i32.and (i32.lt_u (local.get $i) (local.get $end))
                         (call $is_digit (i32.load8_u (local.get $i))))
              (then
                (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
                                       (i32.sub (i32.load8_u (local.get $i)) (i32.const 48))))
                (if (i32.gt_u (local.get $n) (i32.const 0x40000000))
                  (then (local.set $n (i32.const 0x40000000))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $digits))))
          (return (local.get $n)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; Grows the memory to at least $bytes bytes, or traps: a sieve that does not fit has no
  ;; answer (the runtime reports the refused growth as the action exhausting its memory).
  (func $reserve (param $bytes i32) (local $pages i32)
    (local.set $pages (i32.add (i32.shr_u (local.get $bytes) (i32.const 16)) (i32.const 1)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then unreachable)))))

  (func (export "_start")
    (local $size i32) (local $n i32) (local $s i32) (local $i i32) (local $j i32)
    (local $count i32) (local $out i32) (local $len i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $size (i32.load (i32.const 20)))
    (if (i32.and
          (i32.and (i32.ge_u (i32.load (i32.const 16)) (i32.const 2))
                   (i32.le_u (i32.load (i32.const 16)) (i32.const 200)))
          (i32.lt_u (local.get $size) (i32.const 0x10000000)))
      (then
        (call $reserve (i32.add (global.get $args) (local.get $size)))
        (drop (call $args_get (i32.const 64) (global.get $args)))
        (local.set $n (call $find_n (i32.load (i32.const 68))
                                    (call $strlen (i32.load (i32.const 68)))))))
    (if (i32.eqz (local.get $n)) (then (local.set $n (i32.const 20000))))
    ;; s[0..=n], zeroed (fresh memory is zero, but the argument strings may lie below).
    (local.set $s (i32.add (global.get $args) (local.get $size)))
    (call $reserve (i32.add (i32.add (local.get $s) (local.get $n)) (i32.const 1)))
    (memory.fill (local.get $s) (i32.const 0) (i32.add (local.get $n) (i32.const 1)))
    (local.set $i (i32.const 2))
    (block $done
      (loop $outer
        (br_if $done (i32.gt_u (local.get $i) (local.get $n)))
        (if (i32.eqz (i32.load8_u (i32.add (local.get $s) (local.get $i))))
          (then
            (local.set $count (i32.add (local.get $count) (i32.const 1)))
            ;; i * i <= n, without overflowing.
            (if (i32.le_u (local.get $i) (i32.div_u (local.get $n) (local.get $i)))
              (then
                (local.set $j (i32.mul (local.get $i) (local.get $i)))
                (block $crossed
                  (loop $inner
                    (br_if $crossed (i32.gt_u (local.get $j) (local.get $n)))
                    (i32.store8 (i32.add (local.get $s) (local.get $j)) (i32.const 1))
                    (local.set $j (i32.add (local.get $j) (local.get $i)))
                    (br $inner)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    ;; {"primes":<count>}\n, the digits written backwards from 2047.
    (memory.copy (i32.const 2048) (i32.const 1040) (i32.const 10))
    (local.set $out (i32.const 2047))
    (loop $digit
      (local.set $out (i32.sub (local.get $out) (i32.const 1)))
      (i32.store8 (local.get $out)
                  (i32.add (i32.const 48) (i32.rem_u (local.get $count) (i32.const 10))))
      (local.set $count (i32.div_u (local.get $count) (i32.const 10)))
      (br_if $digit (local.get $count)))
    (local.set $len (i32.sub (i32.const 2047) (local.get $out)))
    (memory.copy (i32.const 2058) (local.get $out) (local.get $len))
    (i32.store16 (i32.add (i32.const 2058) (local.get $len)) (i32.const 0x0a7d)) ;; "}\n"
    (call $print (i32.const 2048) (i32.add (local.get $len) (i32.const 12)))))
