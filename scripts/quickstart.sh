#!/usr/bin/env bash
# Sets up everything on a fresh machine (as root) and brings up the whole local OpenWhisk path:
# installs and starts the Docker engine, the Kafka-API broker and the CouchDB-API server, builds
# the workspace and the runtime images, starts invoker 0 (network mode netns unless
# WHISK_NETWORK_MODE says bridge or pcpm) and the standalone front door on port 3233, then uses
# it as a user would: creates an action and invokes it with the `openwhisk` npm client, and runs a
# short concurrency stress (cold and warm). Everything stays up; it prints how to use it.
# Stop everything with: scripts/stack.sh down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/stack.sh up
# shellcheck source=/dev/null
source "${WHISK_STACK_DIR:-$PWD/.stack}/env"

echo "== building the workspace (release)"
cargo build --release --locked --workspace --bins

echo "== broker round trip (produce -> consumer group), 200 hops"
target/release/bench kafka-rtt 200

echo "== starting invoker 0 and the front door"
scripts/stack.sh openwhisk

api="http://127.0.0.1:${WHISK_API_PORT:-3233}"
auth=23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP
echo "== invokers: $(curl -sf "$api/invokers")"

echo "== the openwhisk npm client: create an action, invoke it (blocking), read its logs"
NODE_PATH="$WHISK_OPENWHISK_NODE_PATH" APIHOST="$api" AUTH="$auth" node - <<'JS'
const ow = require('openwhisk')({ apihost: process.env.APIHOST, api_key: process.env.AUTH })
;(async () => {
  await ow.actions.update({ name: 'hello', kind: 'nodejs:default',
    action: 'function main(p) { console.log("hello", p.name); return {greeting: "Hello " + p.name} }' })
  const a = await ow.actions.invoke({ name: 'hello', blocking: true, params: { name: 'OpenWhisk' } })
  console.log(`hello -> ${JSON.stringify(a.response.result)} (activation ${a.activationId}, ${a.duration} ms)`)
  const deadline = Date.now() + 30000
  for (;;) {
    try {
      const { logs } = await ow.activations.logs({ name: a.activationId })
      console.log(`logs: ${JSON.stringify(logs)}`)
      break
    } catch (e) {
      if (e.statusCode !== 404 || Date.now() > deadline) throw e
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }
  // The same greeting as a WebAssembly function in the unikernel (WAT text; see
  // unikernel/functions/README.md).
  await ow.actions.update({ name: 'hello-wasm', kind: 'wasm:0.1',
    action: require('fs').readFileSync('unikernel/functions/hello.wat', 'utf8') })
  const w = await ow.actions.invoke({ name: 'hello-wasm', blocking: true, params: { name: 'OpenWhisk' } })
  console.log(`hello-wasm -> ${JSON.stringify(w.response.result)} (activation ${w.activationId}, ${w.duration} ms, in a unikernel microVM)`)
})().catch(e => { console.error(e.message); process.exit(1) })
JS

echo "== concurrency stress through the REST API (N = 1, 10; 2 rounds)"
NODE_PATH="$WHISK_OPENWHISK_NODE_PATH" node bench/stress/stress.js --apihost "$api" --auth "$auth" --n 1,10 --rounds 2

cat <<MSG

The local OpenWhisk path is up:
$(scripts/stack.sh status)

Use it with the openwhisk npm client (installed in $WHISK_OPENWHISK_NODE_PATH):
  NODE_PATH=$WHISK_OPENWHISK_NODE_PATH node -e "
    const ow = require('openwhisk')({apihost: '$api', api_key: '$auth'})
    ow.actions.invoke({name: 'hello', blocking: true, result: true, params: {name: 'you'}}).then(console.log)"
or, if you have wsk:
  wsk property set --apihost $api --auth $auth
  wsk action create hi hi.js && wsk action invoke hi --result --param name you
Stress:  node bench/stress/stress.js --n 1,10,50 --rounds 3   (after: source .stack/env)
Tests:   scripts/test.sh
Stop:    scripts/stack.sh down   (front door, invoker, then the components)
MSG
