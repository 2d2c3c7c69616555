// A chat page as a Next.js app would write it: useChat pointed at chatcore, resuming a running reply on load.
// tests/integration/test_frontends.py bundles it with esbuild (from this harness's node_modules, no CDN) and
// opens it in Chromium with ?api=<chatcore>&user=<id>&token=<jwt>&chat=<chat id>.

import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { useEffect, useMemo, useState } from "react";
import { createRoot } from "react-dom/client";

const params = new URLSearchParams(window.location.search);
const api = `${params.get("api")}/api/${params.get("user")}`;
const chatId = params.get("chat");
const headers = { Authorization: `Bearer ${params.get("token")}` };

function Part({ part }) {
  if (part.type === "text") return <span className="text">{part.text}</span>;
  if (part.type.startsWith("tool-")) {
    return (
      <div className="tool" data-state={part.state}>
        <span className="name">{part.type.slice("tool-".length)}</span>
        {part.state === "output-available" && <code className="output">{JSON.stringify(part.output)}</code>}
      </div>
    );
  }
  return null;
}

function Chat({ initialMessages }) {
  const transport = useMemo(() => new DefaultChatTransport({ api: `${api}/ai-sdk/chat`, headers }), []);
  const { messages, sendMessage, status, error } = useChat({ id: chatId, messages: initialMessages, transport, resume: true });
  const [input, setInput] = useState("");
  return (
    <main>
      <p id="status">{status}</p>
      {error && <p id="error">{error.message}</p>}
      <ol id="messages">
        {messages.map((message) => (
          <li key={message.id} className={`message ${message.role}`} data-id={message.id}>
            {message.parts.map((part, index) => (
              <Part key={index} part={part} />
            ))}
          </li>
        ))}
      </ol>
      <form
        onSubmit={(event) => {
          event.preventDefault();
          sendMessage({ text: input });
          setInput("");
        }}
      >
        <input id="input" value={input} onChange={(event) => setInput(event.target.value)} />
        <button id="send" type="submit" disabled={status !== "ready"}>
          Send
        </button>
      </form>
    </main>
  );
}

function App() {
  // What a Next.js page does on the server: the stored chat, for useChat's initial messages.
  const [initialMessages, setInitialMessages] = useState(null);
  useEffect(() => {
    fetch(`${api}/ai-sdk/chat/${encodeURIComponent(chatId)}/messages`, { headers })
      .then((response) => response.json())
      .then(setInitialMessages);
  }, []);
  return initialMessages === null ? <p id="loading">Loading…</p> : <Chat initialMessages={initialMessages} />;
}

createRoot(document.getElementById("root")).render(<App />);
