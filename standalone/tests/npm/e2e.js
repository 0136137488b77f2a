// End-to-end checks of the front door with the real `openwhisk` npm client.
// Run by standalone/tests/front_door.rs with: APIHOST, AUTH (uuid:key), WHISK_SYSTEM_AUTH (the
// whisk.system key), NATIVE_ZIP (a zip with a
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

  // --native: wsk sends the dockerskeleton image without a tag; it resolves to the local build.
  const untagged = await ow.actions.create({
    name: 'native-untagged',
    action: fs.readFileSync(process.env.NATIVE_ZIP),
    exec: { kind: 'blackbox', image: 'openwhisk/dockerskeleton' }
  })
  assert.equal(untagged.exec.image, 'openwhisk/dockerskeleton:nightly')
  assert.deepEqual(
    await ow.actions.invoke({ name: 'native-untagged', blocking: true, result: true, params: { name: 'U' } }),
    { native: 'U' })
  ok('an untagged openwhisk/dockerskeleton (wsk --native) runs the local build')

  await packages()
  await sequences()
  await webActions()
  await triggersAndRules()

  const everything = await ow.namespaces.get()
  assert.ok(everything.actions.some(a => a.name === 'inc'), 'actions listed')
  assert.ok(everything.actions.some(a => a.name === 'greet' && a.namespace === 'guest/tools'), 'packaged actions listed')
  assert.ok(everything.packages.some(p => p.name === 'tools' && p.binding === false), 'packages listed')
  assert.ok(everything.packages.some(p => p.name === 'mytools' && p.binding.name === 'tools'), 'bindings listed')
  assert.ok(everything.triggers.some(t => t.name === 'kicks'), 'triggers listed')
  assert.ok(everything.rules.some(r => r.name === 'kick-recorder'), 'rules listed')
  // wsk's Go client asks for the same in one call.
  const r = await fetch(`${apihost}/api/v1/namespaces/_`, { headers: { authorization: 'Basic ' + Buffer.from(auth).toString('base64') } })
  const contents = await r.json()
  assert.deepEqual(Object.keys(contents).sort(), ['actions', 'packages', 'rules', 'triggers'])
  for (const kind of ['actions', 'packages', 'triggers', 'rules']) {
    assert.deepEqual(contents[kind].map(e => e.name).sort(), everything[kind].map(e => e.name).sort(), kind)
  }
  ok('namespace get (wsk list): actions, packages, triggers and rules, one call or four')

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

async function packages () {
  const greet = 'function main(p) { return {msg: p.greeting + " " + p.name + p.punct} }'
  const tools = await ow.packages.create({
    name: 'tools',
    package: { parameters: [{ key: 'greeting', value: 'Hi' }, { key: 'punct', value: '.' }], publish: false }
  })
  assert.deepEqual(tools.binding, {})
  await rejects(ow.packages.create({ name: 'tools' }), 409, 'package exists')
  await ow.actions.create({ name: 'tools/greet', action: greet, params: { punct: '!' } })
  assert.deepEqual(
    await ow.actions.invoke({ name: 'tools/greet', blocking: true, result: true, params: { name: 'Ada' } }),
    { msg: 'Hi Ada!' }, 'package parameters under the action\'s, the request\'s over both')
  const got = await ow.packages.get({ name: 'tools' })
  assert.deepEqual(got.actions.map(a => a.name), ['greet'])
  const greetAction = await ow.actions.get({ name: 'tools/greet' })
  assert.equal(greetAction.namespace, 'guest/tools')
  ok('package create, packaged action create/get/invoke with inherited parameters')

  const bound = await ow.packages.create({
    name: 'mytools',
    package: { binding: { namespace: '_', name: 'tools' }, parameters: [{ key: 'greeting', value: 'Hello' }] }
  })
  assert.deepEqual(bound.binding, { namespace: 'guest', name: 'tools' })
  assert.ok(bound.annotations.some(a => a.key === 'binding'), 'the binding annotation is the controller\'s')
  const viaBinding = await ow.actions.invoke({ name: 'mytools/greet', blocking: true, params: { name: 'Bo' } })
  assert.deepEqual(viaBinding.response.result, { msg: 'Hello Bo!' })
  const ann = Object.fromEntries(viaBinding.annotations.map(a => [a.key, a.value]))
  assert.equal(ann.path, 'guest/tools/greet', 'the message names the package that holds the action')
  assert.equal(ann.binding, 'guest/mytools', 'and the binding it came through')
  const boundGot = await ow.packages.get({ name: 'mytools' })
  assert.deepEqual(boundGot.actions.map(a => a.name), ['greet'])
  assert.equal(boundGot.parameters.find(p => p.key === 'greeting').value, 'Hello')
  await rejects(ow.actions.create({ name: 'mytools/x', action: greet }), 400, 'no actions in a binding')
  await rejects(ow.packages.create({ name: 'b2', package: { binding: { namespace: '_', name: 'mytools' } } }), 400, 'binding to a binding')
  await rejects(ow.packages.create({ name: 'b3', package: { binding: { namespace: '_', name: 'nothing' } } }), 400, 'binding to nothing')
  ok('package bind: the binding\'s parameters over the package\'s, ActivationMessage path and binding')

  // whisk.system shares what it publishes.
  const system = openwhisk({ apihost, api_key: process.env.WHISK_SYSTEM_AUTH })
  await system.packages.create({ name: 'utils', package: { publish: true } })
  await system.actions.create({ name: 'utils/echo', action: 'function main(p) { return p }' })
  await system.packages.create({ name: 'private' })
  const shared = await ow.packages.list({ namespace: 'whisk.system' })
  assert.deepEqual(shared.map(p => p.name), ['utils'], 'only published packages of another namespace are listed')
  assert.deepEqual(
    await ow.actions.invoke({ name: '/whisk.system/utils/echo', blocking: true, result: true, params: { a: 1 } }),
    { a: 1 })
  await rejects(ow.packages.get({ name: '/whisk.system/private' }), 403, 'an unpublished package of another namespace')
  await rejects(ow.actions.create({ name: '/whisk.system/utils/mine', action: greet }), 403, 'writing into another namespace')
  await ow.packages.create({ name: 'sysutils', package: { binding: { namespace: 'whisk.system', name: 'utils' } } })
  assert.deepEqual(
    await ow.actions.invoke({ name: 'sysutils/echo', blocking: true, result: true, params: { b: 2 } }),
    { b: 2 })
  ok('whisk.system: published packages listed, read, bound and invoked; the rest is 403')

  await rejects(ow.packages.delete({ name: 'tools' }), 409, 'a package with actions')
  await ow.packages.create({ name: 'scratch' })
  await ow.actions.create({ name: 'scratch/a', action: greet })
  await ow.actions.delete({ name: 'scratch/a' })
  await ow.packages.delete({ name: 'scratch' })
  await rejects(ow.packages.get({ name: 'scratch' }), 404, 'deleted package')
  ok('packaged action delete, package delete (409 while it holds actions)')
}

async function sequences () {
  await ow.actions.create({ name: 'inc', action: 'function main(p) { return {n: (p.n || 0) + 1} }' })
  await ow.actions.create({ name: 'dbl', action: 'function main(p) { return {n: p.n * 2} }' })
  await ow.actions.create({ name: 'boom', action: 'function main(p) { return {error: "boom at " + p.n} }' })
  const seq = await ow.actions.create({ name: 'incdblinc', sequence: ['/_/inc', '/_/dbl', '/_/inc'] })
  assert.equal(seq.exec.kind, 'sequence')
  assert.deepEqual(seq.exec.components, ['/guest/inc', '/guest/dbl', '/guest/inc'])
  const run = await ow.actions.invoke({ name: 'incdblinc', blocking: true, params: { n: 1 } })
  assert.deepEqual(run.response.result, { n: 5 })
  assert.equal(run.logs.length, 3, 'the component activation ids')
  const ann = Object.fromEntries(run.annotations.map(a => [a.key, a.value]))
  assert.equal(ann.topmost, true)
  assert.equal(ann.kind, 'sequence')
  assert.equal(ann.path, 'guest/incdblinc')
  assert.equal(ann.limits.memory, 256)
  const components = await Promise.all(run.logs.map(id => activation(id)))
  assert.deepEqual(components.map(c => c.name), ['inc', 'dbl', 'inc'])
  assert.deepEqual(components.map(c => c.response.result.n), [2, 4, 5])
  for (const c of components) {
    assert.equal(c.cause, run.activationId, 'each component names the sequence as its cause')
    assert.ok(c.annotations.some(a => a.key === 'causedBy' && a.value === 'sequence'))
  }
  assert.equal(run.duration, components.reduce((sum, c) => sum + c.duration, 0))
  const stored = await activation(run.activationId)
  assert.deepEqual(stored.logs, run.logs, 'the sequence\'s record is stored')
  ok('a sequence runs each component through an invoker; its record has the components\' ids')

  // A sequence inside a sequence, and a non-blocking sequence.
  await ow.actions.create({ name: 'outer', sequence: ['/_/incdblinc', '/_/dbl'] })
  assert.deepEqual(await ow.actions.invoke({ name: 'outer', blocking: true, result: true, params: { n: 0 } }), { n: 6 })
  const { activationId } = await ow.actions.invoke({ name: 'outer', params: { n: 1 } })
  const later = await activation(activationId)
  assert.deepEqual(later.response.result, { n: 10 })
  const inner = await activation(later.logs[0])
  assert.equal(inner.cause, activationId)
  assert.ok(inner.annotations.some(a => a.key === 'topmost' && a.value === false))
  ok('nested and non-blocking sequences')

  await ow.actions.create({ name: 'shorted', sequence: ['/_/inc', '/_/boom', '/_/dbl'] })
  const failed = await rejects(ow.actions.invoke({ name: 'shorted', blocking: true, params: { n: 1 } }), 502, 'short-circuit')
  assert.deepEqual(failed.error.response.result, { error: 'boom at 2' })
  assert.equal(failed.error.logs.length, 2, 'dbl never ran')
  await ow.actions.create({ name: 'dangling', sequence: ['/_/inc', '/_/gone'] }).then(
    () => assert.fail('a missing component is refused at create'),
    e => assert.equal(e.statusCode, 400))
  await rejects(ow.actions.create({ name: 'long', sequence: Array(51).fill('/_/inc') }), 400, '51 components')
  await rejects(ow.actions.update({ name: 'inc', sequence: ['/_/outer'] }), 400, 'a cycle')
  ok('a sequence stops at the first error; missing components, more than 50 actions and cycles are refused')
}

async function web (path, init) {
  const r = await fetch(`${apihost}/api/v1/web/guest/${path}`, init)
  const body = Buffer.from(await r.arrayBuffer())
  return { status: r.status, type: r.headers.get('content-type'), headers: r.headers, body }
}

async function webActions () {
  const code = `function main(p) {
    if (p.__ow_path === '/http') return {statusCode: 201, headers: {'x-made': 'yes', 'content-type': 'text/plain'}, body: 'made ' + p.name}
    if (p.__ow_path === '/png') return {headers: {'content-type': 'image/png'}, body: 'iVBORw=='}
    if (p.__ow_path === '/fail') return {error: {statusCode: 418, body: 'teapot'}}
    return {text: 'hello ' + p.name, html: '<b>' + p.name + '</b>', method: p.__ow_method, path: p.__ow_path,
            agent: p.__ow_headers['x-agent'] || null, body: p.__ow_body, name: p.name, extra: p.extra}
  }`
  await ow.actions.create({ name: 'site', action: code, annotations: { 'web-export': true } })
  let r = await web('default/site.json?name=Ada', { headers: { 'x-agent': 'e2e' } })
  assert.equal(r.status, 200)
  const json = JSON.parse(r.body)
  assert.deepEqual([json.method, json.path, json.agent, json.name], ['get', '', 'e2e', 'Ada'])
  r = await web('default/site.text?name=Bo')
  assert.deepEqual([r.status, r.type.split(';')[0], r.body.toString()], [200, 'text/plain', 'hello Bo'])
  r = await web('default/site.html?name=Cy')
  assert.deepEqual([r.status, r.type.split(';')[0], r.body.toString()], [200, 'text/html', '<b>Cy</b>'])
  r = await web('default/site.http/http', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Di' }) })
  assert.deepEqual([r.status, r.headers.get('x-made'), r.body.toString()], [201, 'yes', 'made Di'])
  assert.match(r.headers.get('x-openwhisk-activation-id'), /^[0-9a-f]{32}$/)
  r = await web('default/site/png')
  assert.deepEqual([r.status, r.type, [...r.body]], [200, 'image/png', [0x89, 0x50, 0x4e, 0x47]], 'no extension is .http; base64 body decoded')
  r = await web('default/site.http/fail')
  assert.deepEqual([r.status, r.body.toString()], [418, 'teapot'], 'an application error answers its error field')
  r = await web('default/site.json', { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'plain words' })
  assert.equal(JSON.parse(r.body).body, 'plain words', '__ow_body for a text body')
  r = await web('default/site.json?__ow_method=x')
  assert.equal(r.status, 400, 'reserved properties')
  await ow.actions.create({ name: 'hidden', action: code })
  assert.equal((await web('default/hidden.json')).status, 404, 'not exported')
  ok('web actions: .json, .text, .html, .http (status, headers, base64), errors, __ow_* context')

  await ow.actions.create({ name: 'raw', action: 'function main(p) { return {q: p.__ow_query, b: p.__ow_body, name: p.name || null} }', annotations: { 'web-export': true, 'raw-http': true } })
  r = await web('default/raw.json?name=x&y=1', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'raw body' })
  assert.deepEqual(JSON.parse(r.body), { q: 'name=x&y=1', b: 'raw body', name: null })
  await ow.actions.create({ name: 'fixed', action: code, params: { name: 'Fixed' }, annotations: { 'web-export': true, final: true } })
  assert.equal(JSON.parse((await web('default/fixed.json')).body).name, 'Fixed')
  assert.equal((await web('default/fixed.json?name=Other')).status, 400, 'a final parameter')
  await rejects(ow.actions.invoke({ name: 'fixed', blocking: true, params: { name: 'Other' } }), 400, 'a final parameter on invoke')
  await ow.actions.create({ name: 'secret', action: code, annotations: { 'web-export': true, 'require-whisk-auth': 's3cr3t' } })
  assert.equal((await web('default/secret.json')).status, 401)
  assert.equal((await web('default/secret.json', { headers: { 'x-require-whisk-auth': 's3cr3t' } })).status, 200)
  await ow.actions.create({ name: 'authed', action: code, annotations: { 'web-export': true, 'require-whisk-auth': true } })
  assert.equal((await web('default/authed.json')).status, 401)
  r = await web('default/authed.json', { headers: { authorization: 'Basic ' + Buffer.from(auth).toString('base64') } })
  assert.equal(r.status, 200)
  await ow.actions.create({ name: 'tools/page', action: code, annotations: { 'web-export': true } })
  assert.equal(JSON.parse((await web('tools/page.json?name=P')).body).text, 'hello P', 'a packaged web action')
  ok('web actions: raw-http, final parameters, require-whisk-auth (secret and credentials), packaged')
}

async function triggersAndRules () {
  await ow.actions.create({ name: 'recorder', action: 'function main(p) { return {got: p.x, src: p.src, headers: typeof p.__ow_headers} }' })
  const t = await ow.triggers.create({ name: 'kicks', trigger: { parameters: [{ key: 'src', value: 'trigger' }, { key: 'x', value: 0 }] } })
  assert.equal(t.name, 'kicks')
  const rule = await ow.rules.create({ name: 'kick-recorder', trigger: 'kicks', action: 'recorder' })
  assert.equal(rule.status, 'active')
  assert.deepEqual(rule.trigger, { path: 'guest', name: 'kicks' })
  assert.deepEqual(rule.action, { path: 'guest', name: 'recorder' })
  const fired = await ow.triggers.invoke({ name: 'kicks', params: { x: 7 } })
  assert.match(fired.activationId, /^[0-9a-f]{32}$/)
  const record = await activation(fired.activationId)
  assert.equal(record.name, 'kicks')
  assert.deepEqual(record.response.result, { x: 7 })
  assert.equal(record.logs.length, 1)
  const line = JSON.parse(record.logs[0])
  assert.deepEqual([line.rule, line.action, line.success, line.statusCode], ['guest/kick-recorder', 'guest/recorder', true, 0])
  const ran = await activation(line.activationId)
  assert.deepEqual(ran.response.result, { got: 7, src: 'trigger', headers: 'object' })
  ok('trigger fire: the rule\'s action runs with the trigger\'s parameters under the request\'s; the trigger\'s record')

  await ow.rules.disable({ name: 'kick-recorder' })
  assert.equal((await ow.rules.get({ name: 'kick-recorder' })).status, 'inactive')
  const quiet = await ow.triggers.invoke({ name: 'kicks', params: { x: 8 } })
  assert.ok(!quiet || !quiet.activationId, 'no active rule: 204, no record')
  await ow.rules.enable({ name: 'kick-recorder' })
  assert.equal((await ow.rules.get({ name: 'kick-recorder' })).status, 'active')
  assert.ok((await ow.rules.list()).some(r => r.name === 'kick-recorder'))
  assert.ok((await ow.triggers.list()).some(t => t.name === 'kicks'))
  await rejects(ow.rules.create({ name: 'r2', trigger: 'nope', action: 'recorder' }), 400, 'a rule needs its trigger')
  await ow.triggers.create({ name: 'spare' })
  await ow.rules.create({ name: 'spare-rule', trigger: 'spare', action: 'recorder' })
  const removed = await ow.rules.delete({ name: 'spare-rule' })
  assert.equal(removed.status, 'inactive')
  await rejects(ow.rules.get({ name: 'spare-rule' }), 404, 'deleted rule')
  assert.deepEqual((await ow.triggers.get({ name: 'spare' })).rules, {}, 'the trigger forgot the rule')
  await ow.triggers.delete({ name: 'spare' })
  ok('rules: disable (fire is a 204), enable, list, delete; triggers: list, get, delete')
}

main().then(() => console.log('all checks passed'), e => {
  console.error(`not ok - ${e.stack || e}`)
  process.exit(1)
})
