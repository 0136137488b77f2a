// Node.js launcher of the action proxy (protocol in runtimes/proxy/src/lib.rs): loads the
// action once, then answers one JSON line on fd 3 per request line on stdin.
'use strict';
const fs = require('fs');
const path = require('path');
const Module = require('module');
const readline = require('readline');

const dir = process.env.OW_ACTION_DIR || '/action';
const file = process.env.OW_SOURCE_FILE || 'index.js';
const mainName = process.env.OW_MAIN || 'main';
const binary = process.env.OW_BINARY === 'true';

function reply(obj) {
  fs.writeSync(3, JSON.stringify(obj) + '\n');
}

// Writes to a full pipe are queued by Node and finish later: wait until stdout and stderr have
// handed everything to the kernel, so the proxy's sentinels come after the action's output.
function drained(stream) {
  return new Promise((resolve) => {
    if (stream.writableLength === 0) resolve();
    else stream.once('drain', resolve);
  });
}

function flushed() {
  return Promise.all([drained(process.stdout), drained(process.stderr)]);
}

function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}

function load() {
  if (binary) {
    // A zip: package.json's "main", else index.js, like `require(folder)`.
    const mod = require(path.resolve(dir));
    return mod[mainName];
  }
  // Plain code declares `function main(params)` (or exports it), as in OpenWhisk.
  const filename = path.join(dir, file);
  const code = fs.readFileSync(filename, 'utf8');
  const m = new Module(filename, module);
  m.filename = filename;
  m.paths = Module._nodeModulePaths(dir);
  const isIdent = /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(mainName);
  const pick = isIdent
    ? `\n;module.exports.__ow_main = (typeof ${mainName} === 'function') ? ${mainName} : module.exports[${JSON.stringify(mainName)}];`
    : `\n;module.exports.__ow_main = module.exports[${JSON.stringify(mainName)}];`;
  m._compile(code + pick, filename);
  return m.exports.__ow_main;
}

let main;
try {
  main = load();
  if (typeof main !== 'function') {
    throw new Error(`Action entrypoint '${mainName}' is not a function.`);
  }
} catch (e) {
  console.error(e && e.stack ? e.stack : String(e));
  reply({ error: `Initialization has failed due to: ${errorText(e)}` });
  process.exit(0);
}
reply({ ok: true });

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', async (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    return;
  }
  const id = msg.id;
  for (const [k, v] of Object.entries(msg)) {
    if (k !== 'value' && k !== 'id') {
      process.env['__OW_' + k.toUpperCase()] = v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v);
    }
  }
  let answer;
  try {
    const result = await main(msg.value);
    answer = { id, result: result === undefined ? null : result };
  } catch (e) {
    console.error(e && e.stack ? e.stack : String(e));
    answer = { id, exception: errorText(e) };
  }
  await flushed();
  reply(answer);
});
rl.on('close', () => process.exit(0));
