// The AI SDK's and AG-UI's own clients against a running chatcore: `node scenarios.mjs <name>`.
//
// tests/integration/test_frontends.py starts `chatcore serve` (two replicas on one PostgreSQL database) and runs
// one scenario per test with CHATCORE_URL, CHATCORE_REPLICA_URL, CHATCORE_USER and CHATCORE_TOKEN set. Each
// scenario drives the real client code (DefaultChatTransport, readUIMessageStream, the Chat class behind
// useChat, HttpAgent), asserts what a frontend would see, and prints one JSON line of facts for the Python
// side to check against chatcore's own API. Any failed assertion exits non-zero with its message.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import { Chat } from "@ai-sdk/react";
import { HttpAgent } from "@ag-ui/client";
import {
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithApprovalResponses,
  readUIMessageStream,
} from "ai";

const base = process.env.CHATCORE_URL;
const replica = process.env.CHATCORE_REPLICA_URL ?? base;
const user = process.env.CHATCORE_USER;
const headers = { Authorization: `Bearer ${process.env.CHATCORE_TOKEN}` };
assert.ok(base && user && process.env.CHATCORE_TOKEN, "CHATCORE_URL, CHATCORE_USER and CHATCORE_TOKEN must be set");

const transport = (url = base) => new DefaultChatTransport({ api: `${url}/api/${user}/ai-sdk/chat`, headers });
const userMessage = (text) => ({ id: randomUUID(), role: "user", parts: [{ type: "text", text }] });
const textOf = (message) =>
  message.parts
    .filter((part) => part.type === "text")
    .map((part) => part.text)
    .join("");
const toolParts = (message) => message.parts.filter((part) => part.type.startsWith("tool-"));
/** What useChat's sendMessage({text}) makes the transport send: a new chat id's first message. */
const send = (chatId, text) =>
  transport().sendMessages({
    chatId,
    messages: [userMessage(text)],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });

async function api(path, url = base) {
  const response = await fetch(`${url}/api/${user}${path}`, { headers });
  const body = await response.text();
  assert.equal(response.status, 200, `${path}: ${response.status} ${body}`);
  return JSON.parse(body);
}

/** Every snapshot readUIMessageStream yields, and the last one. */
async function read(stream, message) {
  const snapshots = [];
  for await (const snapshot of readUIMessageStream({ stream, message, terminateOnError: true })) {
    snapshots.push(structuredClone(snapshot));
  }
  assert.ok(snapshots.length > 0, "the stream yielded no message");
  return { snapshots, last: snapshots.at(-1) };
}

/** A Chat (the class useChat keeps its state in) whose `sendAutomaticallyWhen` answers approvals by itself. */
function newChat(id = randomUUID()) {
  return new Chat({ id, transport: transport(), sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses });
}

async function settled(chat, what) {
  const deadline = Date.now() + 30_000;
  while (chat.status === "submitted" || chat.status === "streaming") {
    assert.ok(Date.now() < deadline, `${what}: still ${chat.status}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.equal(chat.error, undefined, `${what}: ${chat.error}`);
}

const scenarios = {
  /** sendMessages + readUIMessageStream: streamed text, the add_task part with its output, nothing to resume after. */
  async "ai-sdk-send"() {
    const chatId = randomUUID().slice(0, 16);
    const stream = await send(chatId, "Add a task to buy milk");
    const { snapshots, last } = await read(stream);

    assert.equal(last.role, "assistant");
    assert.match(textOf(last), /Buy milk/);
    const [tool] = toolParts(last);
    assert.equal(tool.type, "tool-add_task");
    assert.equal(tool.state, "output-available");
    assert.deepEqual(tool.input, { title: "Buy milk" });
    assert.equal(tool.output.title, "Buy milk");
    const growing = [...new Set(snapshots.map(textOf))].filter(Boolean);
    assert.ok(growing.length >= 3, `the text did not stream: ${JSON.stringify(growing)}`);
    growing.forEach((text) => assert.ok(textOf(last).startsWith(text)));
    assert.deepEqual(
      last.parts.map((part) => part.type),
      ["step-start", "tool-add_task", "step-start", "text"],
    );

    assert.equal(await transport().reconnectToStream({ chatId }), null, "a finished chat has nothing to resume");
    const stored = await api(`/ai-sdk/chat/${chatId}/messages`);
    assert.equal(stored.length, 2);
    assert.equal(stored[1].id, last.id, "the streamed reply and the stored one have one id");
    assert.deepEqual(stored[1].parts.map((part) => part.type), last.parts.map((part) => part.type));
    assert.equal(textOf(stored[1]), textOf(last));
    assert.deepEqual(toolParts(stored[1])[0].output, tool.output);
    return { chatId, messageId: last.id, conversationId: last.metadata.conversationId, text: textOf(last) };
  },

  /** reconnectToStream while a turn runs (on the other replica): the whole reply, replayed then live; then 204. */
  async "ai-sdk-resume"() {
    const chatId = randomUUID().slice(0, 16);
    const stream = await send(chatId, "hello");
    const reader = stream.getReader();
    const seen = [];
    while (!seen.some((chunk) => chunk.type === "text-delta")) {
      const { value, done } = await reader.read();
      assert.ok(!done, "the turn ended before it streamed any text");
      seen.push(value);
    }

    const resumed = await transport(replica).reconnectToStream({ chatId });
    assert.ok(resumed, "a running turn must be resumable");
    const { snapshots, last } = await read(resumed);
    const rest = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest.push(value);
    }
    const original = [...seen, ...rest];

    const direct = original.filter((chunk) => chunk.type === "text-delta").map((chunk) => chunk.delta).join("");
    assert.equal(textOf(last), direct, "the resumed reply is the reply");
    assert.equal(last.id, original[0].messageId);
    assert.ok(snapshots.length > 1);
    assert.equal(original.at(-1).type, "finish");
    assert.equal(await transport(replica).reconnectToStream({ chatId }), null, "after the turn, 204");
    return { chatId, text: direct };
  },

  /** The Chat class (useChat's): regenerate() answers the same user message again; the old reply leaves the chat. */
  async "ai-sdk-regenerate"() {
    const chat = newChat();
    await chat.sendMessage({ text: "Add a task to call mom" });
    await settled(chat, "first reply");
    const first = chat.lastMessage;
    assert.match(textOf(first), /Call mom/);

    await chat.regenerate();
    await settled(chat, "regenerated reply");
    const second = chat.lastMessage;
    assert.equal(chat.messages.length, 2);
    assert.notEqual(second.id, first.id);
    assert.match(textOf(second), /Call mom/);
    assert.equal(toolParts(second)[0].type, "tool-add_task");

    const stored = await api(`/ai-sdk/chat/${chat.id}/messages`);
    assert.deepEqual(stored.map((message) => message.role), ["user", "assistant"]);
    assert.equal(stored[1].id, second.id, "the chat's messages after a reload: the regenerated reply only");
    return {
      chatId: chat.id,
      conversationId: second.metadata.conversationId,
      firstId: first.id,
      secondId: second.id,
      firstTaskId: toolParts(first)[0].output.task_id,
      secondTaskId: toolParts(second)[0].output.task_id,
    };
  },

  /** addToolApprovalResponse on the Chat class: the pending delete_task part, approved, runs once and the reply says so. */
  async "ai-sdk-approval"() {
    const chat = newChat();
    await chat.sendMessage({ text: "Add a task to buy eggs" });
    await settled(chat, "add");
    await chat.sendMessage({ text: "Delete the eggs task" });
    await settled(chat, "delete asked");
    const asked = chat.lastMessage;
    const pending = toolParts(asked).find((part) => part.state === "approval-requested");
    assert.ok(pending, `no part awaits approval: ${JSON.stringify(asked.parts)}`);
    assert.equal(pending.type, "tool-delete_task");

    await chat.addToolApprovalResponse({ id: pending.approval.id, approved: true });
    await new Promise((resolve) => setTimeout(resolve, 50));
    await settled(chat, "approved");
    const done = chat.lastMessage;
    assert.equal(done.id, asked.id, "the continuation goes on in the same message");
    const deleted = toolParts(done).find((part) => part.toolCallId === pending.toolCallId);
    assert.equal(deleted.state, "output-available");
    assert.match(textOf(done), /eggs/i);
    return { chatId: chat.id, conversationId: done.metadata.conversationId, toolCallId: pending.toolCallId };
  },

  /** HttpAgent.runAgent: the run's events in order, and the messages the agent ends with. */
  async "ag-ui-run"() {
    const threadId = `thread-${randomUUID()}`;
    const agent = new HttpAgent({ url: `${base}/api/${user}/ag-ui`, headers, threadId });
    agent.addMessage({ id: randomUUID(), role: "user", content: "Add a task to buy bread" });
    const events = [];
    const { newMessages } = await agent.runAgent({ runId: randomUUID() }, { onEvent: ({ event }) => void events.push(event) });

    const kinds = events.map((event) => event.type);
    assert.equal(kinds[0], "RUN_STARTED");
    assert.equal(kinds.at(-1), "RUN_FINISHED");
    for (const kind of ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"]) {
      assert.ok(kinds.includes(kind), `no ${kind} in ${kinds}`);
    }
    assert.deepEqual(events.at(-1).outcome, { type: "success" });
    const call = newMessages.find((message) => message.role === "assistant" && message.toolCalls?.length);
    assert.equal(call.toolCalls[0].function.name, "add_task");
    assert.deepEqual(JSON.parse(call.toolCalls[0].function.arguments), { title: "Buy bread" });
    const result = newMessages.find((message) => message.role === "tool");
    assert.equal(JSON.parse(result.content).title, "Buy bread");
    const reply = newMessages.at(-1);
    assert.equal(reply.role, "assistant");
    assert.match(reply.content, /Buy bread/);
    assert.deepEqual(agent.messages.slice(-newMessages.length), newMessages);

    // A second run on the thread continues the same conversation.
    agent.addMessage({ id: randomUUID(), role: "user", content: "Show me all my tasks" });
    const second = await agent.runAgent({ runId: randomUUID() });
    assert.match(second.newMessages.at(-1).content, /Buy bread/);
    return { threadId, conversationId: events.at(-1).result.conversationId, kinds };
  },
};

const name = process.argv[2];
if (!(name in scenarios)) {
  console.error(`unknown scenario ${name}; one of: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
const facts = await scenarios[name]();
console.log(JSON.stringify(facts));
