// Drives an MCP server through the gateway with the official MCP TypeScript
// SDK's client (`Client` over `StreamableHTTPClientTransport`), a bearer
// token in every request, and prints one JSON report of what each step got.
//
//   node client.mjs URL --token-file FILE STEP...
//
// The steps are those of client.py ({"op": "tools"}, {"op": "call", ...},
// {"op": "wait_for_client", "flag": PATH}, ...). The SDK speaks the
// initialize handshake with a session (`Mcp-Session-Id`). The token is read
// from a file, so it never shows in a process list. NODE_PATH names the
// node_modules folder tests/tools/mcp/build.sh installed.

import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.env.NODE_PATH, "noop.js"));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

const args = process.argv.slice(2);
const url = args.shift();
if (args.shift() !== "--token-file") {
  throw new Error("usage: node client.mjs URL --token-file FILE STEP...");
}
const token = readFileSync(args.shift(), "utf8").trim();

// The tool's text answer as JSON, when it is JSON.
const asJson = (text) => {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
};
const textOf = (result) => (result.content ?? []).map((c) => c.text ?? "").join("");

async function step(client, plan) {
  switch (plan.op) {
    case "tools":
      return { ok: true, names: (await client.listTools()).tools.map((t) => t.name) };
    case "resources":
      return { ok: true, names: (await client.listResources()).resources.map((r) => r.uri) };
    case "prompts":
      return { ok: true, names: (await client.listPrompts()).prompts.map((p) => p.name) };
    case "call": {
      const result = await client.callTool({ name: plan.name, arguments: plan.args ?? {} });
      const text = textOf(result);
      return { ok: !result.isError, text, json: asJson(text) };
    }
    case "read": {
      const result = await client.readResource({ uri: plan.uri });
      return { ok: true, text: result.contents.map((c) => c.text ?? "").join("") };
    }
    case "prompt": {
      const result = await client.getPrompt({ name: plan.name, arguments: plan.args ?? {} });
      return { ok: true, messages: result.messages.length };
    }
    case "wait_for_client": {
      const result = await client.callTool(
        { name: "wait_for_client", arguments: { flag: plan.flag } },
        undefined,
        { onprogress: () => writeFileSync(plan.flag, "") },
      );
      return { ok: !result.isError, text: textOf(result) };
    }
    default:
      throw new Error(`unknown step ${plan.op}`);
  }
}

const report = { steps: [] };
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "attach-tests", version: "1.0.0" });
try {
  await client.connect(transport);
  report.protocol_version = transport.protocolVersion ?? null;
  for (const raw of args) {
    try {
      report.steps.push(await step(client, JSON.parse(raw)));
    } catch (e) {
      report.steps.push({ ok: false, error: `${e.name}: ${e.message}` });
    }
  }
  await transport.terminateSession().catch(() => {});
  await client.close();
} catch (e) {
  report.connect_error = `${e.name}: ${e.message}`;
}
console.log(JSON.stringify(report));
