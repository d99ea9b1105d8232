// TEST-ONLY: a second, independent MCP client (the official TypeScript SDK, pinned in package.json)
// against a running API. tests/test_mcp.py runs it and checks what it prints.
//
// Env: MCP_URL (e.g. http://127.0.0.1:8000/mcp), MCP_TOKEN (a bearer token), TITLE (of the task to add).
// Prints one JSON line: {protocolVersion, tools, added, found}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const { MCP_URL, MCP_TOKEN, TITLE } = process.env;
const transport = new StreamableHTTPClientTransport(new URL(MCP_URL), {
  requestInit: { headers: { Authorization: `Bearer ${MCP_TOKEN}` } },
});
const client = new Client({ name: "task-api-ts-test", version: "1.0.0" });
await client.connect(transport);

const { tools } = await client.listTools();
// callTool validates structuredContent against each tool's outputSchema (listed above).
const added = await client.callTool({
  name: "add_tasks",
  arguments: { tasks: [{ title: TITLE, priority: "high", due_date: "2026-12-01T18:00:00+01:00" }] },
});
const found = await client.callTool({ name: "find_tasks", arguments: { q: TITLE, limit: 5 } });
await client.close();

process.stdout.write(
  JSON.stringify({ protocolVersion: transport.protocolVersion, tools: tools.map((t) => t.name), added, found }) + "\n",
);
