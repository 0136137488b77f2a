;; The boot test's action: a WASI command that writes a log line on stdout, one on stderr, and
;; its result {"ok":true} as the last line of stdout.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "log from wasm\0a")
  (data (i32.const 200) "warning from wasm\0a")
  (data (i32.const 300) "{\22ok\22:true}\0a")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 1) (i32.const 100) (i32.const 14))
    (call $write (i32.const 2) (i32.const 200) (i32.const 18))
    (call $write (i32.const 1) (i32.const 300) (i32.const 12))))
