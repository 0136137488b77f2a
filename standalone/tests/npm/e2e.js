// End-to-end checks of the front door with the real `openwhisk` npm client.
// Run by standalone/tests/front_door.rs with: APIHOST, AUTH (uuid:key), NATIVE_ZIP (a zip with a
// static `exec`), WASM_WAT (a wasm:0.1 action as WebAssembly text), WASM_ZIP (the same assembled,
// as main.wasm in a zip), and NODE_PATH pointing at the installed client. Prints `ok - <check>` per check;
// exits non-zero at the first failure.
'use strict'
const assert = require('node:assert/strict')
const fs = require('node:fs')
const openwhisk = require('openwhisk')

const apihost = process.env.APIHOST
const auth = process.env.AUTH
const ow = openwhisk({ apihost, api_key: auth })

function ok (what) { console.log(`ok - ${what}`) }

async function rejects (promise, status, what) {
  try {
    await promise
  } catch (e) {
    assert.equal(e.statusCode, status, `${what}: ${e.message}`)
    return e
  }
  assert.fail(`${what}: expected HTTP ${status}, the call succeeded`)
}

async function activation (id) {
  // Non-blocking: the record appears once the invoker stored it.
  const deadline = Date.now() + 60000
  for (;;) {
    try {
      return await ow.activations.get({ name: id })
    } catch (e) {
      if (e.statusCode !== 404 || Date.now() > deadline) throw e
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }
}

async function main () {
  const hello = 'function main(p) { console.log("hello from", p.name); return {payload: "Hello " + p.name} }'
  const created = await ow.actions.create({ name: 'hello', action: hello, kind: 'nodejs:default' })
  assert.equal(created.exec.kind, 'nodejs:18', 'the default kind is resolved')
  assert.equal(created.version, '0.0.1')
  assert.ok(created.annotations.some(a => a.key === 'provide-api-key' && a.value === false))
  await rejects(ow.actions.create({ name: 'hello', action: hello }), 409, 'create again without overwrite')
  ok('create a nodejs action (kind resolved, provide-api-key added, 409 on a second create)')

  assert.deepEqual(
    await ow.actions.invoke({ name: 'hello', blocking: true, result: true, params: { name: 'World' } }),
    { payload: 'Hello World' })
  ok('invoke nodejs blocking with result')

  await ow.actions.create({
    name: 'pyhello',
    kind: 'python:3.11',
    action: 'def main(args):\n    return {"py": "hi " + args.get("name", "?")}\n'
  })
  assert.deepEqual(
    await ow.actions.invoke({ name: 'pyhello', blocking: true, result: true, params: { name: 'Py' } }),
    { py: 'hi Py' })
  ok('python action: create, invoke blocking with result')

  const native = await ow.actions.create({
    name: 'native',
    action: fs.readFileSync(process.env.NATIVE_ZIP),
    exec: { kind: 'blackbox', image: 'openwhisk/dockerskeleton:nightly' }
  })
  assert.equal(native.exec.binary, true, 'a zip is binary code')
  assert.deepEqual(
    await ow.actions.invoke({ name: 'native', blocking: true, result: true, params: { name: 'N' } }),
    { native: 'N' })
  ok('native action (a static binary in a zip): create, invoke blocking with result')

  // wasm:0.1: the unikernel, from WebAssembly text and from a zip holding main.wasm (what
  // `wsk action create f f.zip --kind wasm:0.1` sends).
  const wat = fs.readFileSync(process.env.WASM_WAT, 'utf8')
  const wasmText = await ow.actions.create({ name: 'wasmtext', action: wat, kind: 'wasm:0.1' })
  assert.equal(wasmText.exec.kind, 'wasm:0.1')
  assert.deepEqual(
    await ow.actions.invoke({ name: 'wasmtext', blocking: true, result: true, params: { name: 'Wasm' } }),
    { greeting: 'Hello Wasm' })
  const wasmZip = await ow.actions.create({
    name: 'wasmzip', action: fs.readFileSync(process.env.WASM_ZIP), kind: 'wasm:0.1'
  })
  assert.equal(wasmZip.exec.binary, true, 'a zip is binary code')
  const zipped = await ow.actions.invoke({ name: 'wasmzip', blocking: true, params: { name: 'Zip' } })
  assert.deepEqual(zipped.response.result, { greeting: 'Hello Zip' })
  const wasmLogs = await ow.activations.logs({ name: zipped.activationId })
  assert.ok(wasmLogs.logs.some(l => /stdout: hello: composing a greeting$/.test(l)), JSON.stringify(wasmLogs))
  ok('wasm:0.1 actions from WebAssembly text and from a zip run in the unikernel, with their logs')

  const { activationId } = await ow.actions.invoke({ name: 'hello', params: { name: 'Later' } })
  assert.match(activationId, /^[0-9a-f]{32}$/)
  const record = await activation(activationId)
  assert.equal(record.activationId, activationId)
  assert.deepEqual(record.response.result, { payload: 'Hello Later' })
  assert.equal(record.response.success, true)
  assert.equal(record.response.status, 'success')
  assert.equal(record.name, 'hello')
  ok('invoke non-blocking, then fetch the activation')

  const logs = await ow.activations.logs({ name: activationId })
  assert.equal(logs.logs.length, 1, JSON.stringify(logs))
  assert.match(logs.logs[0], /^\S+\s+stdout: hello from Later$/)
  const result = await ow.activations.result({ name: activationId })
  assert.deepEqual(result.result, { payload: 'Hello Later' })
  assert.equal(result.success, true)
  const listed = await ow.activations.list({ name: 'hello', limit: 5 })
  assert.ok(listed.some(a => a.activationId === activationId), 'the activation is listed')
  ok('activation logs, result and list')

  const updated = await ow.actions.update({
    name: 'hello',
    action: 'function main(p) { return {payload: "Bonjour " + p.name} }'
  })
  assert.equal(updated.version, '0.0.2')
  assert.deepEqual(
    await ow.actions.invoke({ name: 'hello', blocking: true, result: true, params: { name: 'Monde' } }),
    { payload: 'Bonjour Monde' })
  const got = await ow.actions.get({ name: 'hello' })
  assert.match(got.exec.code, /Bonjour/)
  const names = (await ow.actions.list()).map(a => a.name)
  assert.ok(names.includes('hello') && names.includes('pyhello'), names.join(','))
  ok('update an action and see the new code run; get and list')

  await ow.actions.create({ name: 'fails', action: 'function main() { return {error: "boom"} }' })
  const failed = await rejects(ow.actions.invoke({ name: 'fails', blocking: true }), 502, 'application error')
  assert.equal(failed.error.response.result.error, 'boom')
  assert.equal(failed.error.response.status, 'application error')
  ok('an application error is a 502 with the error')

  await rejects(ow.actions.invoke({ name: 'nope', blocking: true }), 404, 'unknown action')
  ok('an unknown action is a 404')

  const stranger = openwhisk({ apihost, api_key: auth.split(':')[0] + ':not-the-key' })
  await rejects(stranger.actions.list(), 401, 'wrong key')
  ok('a wrong key is a 401')

  await ow.actions.delete({ name: 'hello' })
  await rejects(ow.actions.get({ name: 'hello' }), 404, 'deleted action')
  ok('delete an action')

  const n = 50
  const sieve = 'function main(p) { const n = p.n || 20000; const s = new Uint8Array(n + 1); let c = 0; for (let i = 2; i <= n; i++) { if (!s[i]) { c++; for (let j = i * i; j <= n; j += i) s[j] = 1; } } return {primes: c, i: p.i}; }'
  await Promise.all(Array.from({ length: n }, (_, i) =>
    ow.actions.create({ name: `sieve-${i}`, action: sieve, limits: { memory: 128 } })))
  const started = Date.now()
  const results = await Promise.all(Array.from({ length: n }, (_, i) =>
    ow.actions.invoke({ name: `sieve-${i}`, blocking: true, result: true, params: { i } })))
  results.forEach((r, i) => assert.deepEqual(r, { primes: 2262, i }))
  ok(`${n} concurrent invokes of distinct actions all succeed (${Date.now() - started} ms)`)
}

main().then(() => console.log('all checks passed'), e => {
  console.error(`not ok - ${e.stack || e}`)
  process.exit(1)
})
