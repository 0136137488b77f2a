#!/usr/bin/env node
// Concurrency stress through the OpenWhisk REST API with the real `openwhisk` npm client: what a
// researcher runs to see cold-start effects through the full client path (client -> API ->
// Kafka -> invoker -> container and back).
//
//   node bench/stress/stress.js [--apihost http://127.0.0.1:3233] [--auth uuid:key]
//        [--n 1,10,50] [--rounds 3] [--mode cold,warm] [--kind nodejs:default] [--json out.json]
//
// cold: N concurrent blocking invokes of N distinct actions, freshly created for every round (so
//       nothing is warm; the invoker's stem cells serve the first ones, as in production);
// warm: N concurrent blocking invokes of one action whose N containers were warmed first.
// Each invoke is timed from the client's call to its result; per (mode, N) it prints p50, p99,
// max of those, the round's total (median of rounds) and the errors. Needs the openwhisk
// package on NODE_PATH (scripts/stack.sh up installs it; `source .stack/env` sets
// WHISK_OPENWHISK_NODE_PATH).
'use strict'
const path = require('node:path')
const fs = require('node:fs')

if (process.env.WHISK_OPENWHISK_NODE_PATH && !process.env.NODE_PATH) {
  module.paths.unshift(process.env.WHISK_OPENWHISK_NODE_PATH)
}
const openwhisk = require('openwhisk')

function args () {
  const a = {
    apihost: process.env.WHISK_APIHOST || 'http://127.0.0.1:3233',
    auth: process.env.WHISK_AUTH || '23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP',
    n: [1, 10, 50],
    rounds: 3,
    mode: ['cold', 'warm'],
    kind: 'nodejs:default',
    memory: 128,
    json: null
  }
  const argv = process.argv.slice(2)
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]]
    if (v === undefined) usage(`${k} needs a value`)
    switch (k) {
      case '--apihost': a.apihost = v; break
      case '--auth': a.auth = v; break
      case '--n': a.n = v.split(',').map(Number); break
      case '--rounds': a.rounds = Number(v); break
      case '--mode': a.mode = v.split(','); break
      case '--kind': a.kind = v; break
      case '--memory': a.memory = Number(v); break
      case '--json': a.json = v; break
      default: usage(`unknown option ${k}`)
    }
  }
  if (a.n.some(x => !(x > 0)) || !(a.rounds > 0)) usage('--n and --rounds take positive numbers')
  return a
}

function usage (why) {
  console.error(`${why}\nusage: node bench/stress/stress.js [--apihost URL] [--auth uuid:key] [--n 1,10,50] [--rounds 3] [--mode cold,warm] [--kind nodejs:default] [--memory 128] [--json FILE]`)
  process.exit(2)
}

// A CPU-light prime sieve, as in the PCPM paper.
const SIEVE = 'function main(p) { const n = p.n || 20000; const s = new Uint8Array(n + 1); let c = 0; for (let i = 2; i <= n; i++) { if (!s[i]) { c++; for (let j = i * i; j <= n; j += i) s[j] = 1; } } return {primes: c}; }'
const PY_SIEVE = 'def main(p):\n    n = p.get("n", 20000)\n    s = bytearray(n + 1)\n    c = 0\n    for i in range(2, n + 1):\n        if not s[i]:\n            c += 1\n            for j in range(i * i, n + 1, i):\n                s[j] = 1\n    return {"primes": c}\n'

function quantile (sorted, q) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]
}

function summary (xs) {
  const s = [...xs].sort((x, y) => x - y)
  return { count: s.length, p50_ms: quantile(s, 0.5), p99_ms: quantile(s, 0.99), max_ms: s[s.length - 1] }
}

async function timedInvoke (ow, name) {
  const t0 = process.hrtime.bigint()
  try {
    const r = await ow.actions.invoke({ name, blocking: true, result: true, params: { n: 20000 } })
    if (r.primes !== 2262) throw new Error(`unexpected result ${JSON.stringify(r)}`)
    return { ms: Number(process.hrtime.bigint() - t0) / 1e6 }
  } catch (e) {
    return { ms: Number(process.hrtime.bigint() - t0) / 1e6, error: e.statusCode ? `HTTP ${e.statusCode}: ${e.message}` : String(e) }
  }
}

async function main () {
  const a = args()
  const ow = openwhisk({ apihost: a.apihost, api_key: a.auth })
  const code = a.kind.startsWith('python') ? PY_SIEVE : SIEVE
  const tag = `stress${process.pid}`
  const made = []
  const create = async name => {
    await ow.actions.update({ name, action: code, kind: a.kind, limits: { memory: a.memory } })
    made.push(name)
  }
  const cells = []
  console.log(`stress: ${a.apihost}, kind ${a.kind}, ${a.memory} MB, N = ${a.n.join(', ')}, ${a.rounds} rounds`)
  try {
    for (const mode of a.mode) {
      for (const n of a.n) {
        const each = []; const totals = []; const errors = []
        for (let round = 0; round < a.rounds; round++) {
          let names
          if (mode === 'cold') {
            names = Array.from({ length: n }, (_, i) => `${tag}-c-r${round}-n${n}-${i}`)
            await Promise.all(names.map(create))
          } else if (mode === 'warm') {
            const one = `${tag}-w-n${n}`
            names = Array.from({ length: n }, () => one)
            if (round === 0) {
              // N concurrent runs of one action need N containers: warm them all first.
              await create(one)
              for (const r of await Promise.all(names.map(name => timedInvoke(ow, name)))) {
                if (r.error) errors.push(`warm-up: ${r.error}`)
              }
            }
          } else {
            usage(`unknown mode ${mode}`)
          }
          const t0 = process.hrtime.bigint()
          const results = await Promise.all(names.map(name => timedInvoke(ow, name)))
          totals.push(Number(process.hrtime.bigint() - t0) / 1e6)
          for (const r of results) {
            if (r.error) errors.push(r.error)
            else each.push(r.ms)
          }
          process.stderr.write(`  ${mode} N=${n} round ${round + 1}/${a.rounds}: ${totals[totals.length - 1].toFixed(0)} ms\n`)
        }
        const cell = { mode, n, each: summary(each), total: summary(totals), errors: errors.length, first_errors: errors.slice(0, 3) }
        cells.push(cell)
        console.log(`${mode.padEnd(4)} N=${String(n).padStart(3)}: p50 ${cell.each.p50_ms.toFixed(0)} ms  p99 ${cell.each.p99_ms.toFixed(0)} ms  max ${cell.each.max_ms.toFixed(0)} ms  total(median) ${cell.total.p50_ms.toFixed(0)} ms  errors ${errors.length}`)
        for (const e of cell.first_errors) console.log(`    error: ${e}`)
      }
    }
  } finally {
    // The actions this run made go again.
    await Promise.all(made.map(name => ow.actions.delete({ name }).catch(() => {})))
  }
  if (a.json) {
    fs.mkdirSync(path.dirname(path.resolve(a.json)), { recursive: true })
    const os = require('node:os')
    const machine = {
      cores: os.cpus().length,
      cpu_model: (os.cpus()[0] || {}).model,
      memory_gib: Math.round(os.totalmem() / 2 ** 30),
      kernel: os.release()
    }
    fs.writeFileSync(a.json, JSON.stringify({
      kind: 'stress', apihost: a.apihost, network_mode: process.env.WHISK_NETWORK_MODE || null,
      runtime_kind: a.kind, memory_mb: a.memory, rounds: a.rounds, machine, cells
    }, null, 2))
    console.log(`wrote ${a.json}`)
  }
  if (cells.some(c => c.errors > 0)) process.exitCode = 1
}

main().catch(e => { console.error(e.stack || String(e)); process.exit(1) })
