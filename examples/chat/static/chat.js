// The chat page: one WebSocket to /chat/<room>; the nickname lives in the server's session.
"use strict";

const room = decodeURIComponent(location.pathname.split("/").pop() || "lobby");
const log = document.getElementById("log");
let socket = null;
let retryDelay = 500;

document.getElementById("room").textContent = room;

function show(text, kind) {
  const item = document.createElement("li");
  item.textContent = text; // never innerHTML: messages come from other people
  item.className = kind;
  log.appendChild(item);
  item.scrollIntoView();
}

function connect() {
  const url = location.origin.replace(/^http/, "ws") + "/chat/" + encodeURIComponent(room);
  const ws = new WebSocket(url);
  socket = ws;
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "welcome") {
      retryDelay = 500;
      document.getElementById("me").textContent = message.nick;
      document.body.dataset.nick = message.nick; // tests wait for this
      show(`You joined #${message.room} as ${message.nick} (worker ${message.worker})`, "notice");
    } else if (message.type === "join") {
      show(`${message.nick} joined`, "notice");
    } else if (message.type === "message") {
      show(`${message.nick}: ${message.text}`, "message");
    } else if (message.type === "error") {
      show(message.text, "error");
    }
  };
  ws.onclose = () => {
    if (socket !== ws) return; // replaced on purpose (new nickname)
    delete document.body.dataset.nick;
    show("Disconnected; reconnecting…", "notice");
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  };
}

document.getElementById("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value.trim() && socket && socket.readyState === WebSocket.OPEN) {
    socket.send(input.value);
    input.value = "";
  }
});

document.getElementById("nick-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const nick = document.getElementById("nick").value;
  const response = await fetch("/nick", { method: "POST", body: new URLSearchParams({ nick }) });
  if (!response.ok) {
    show("That nickname was refused", "error");
    return;
  }
  // The WebSocket handler reads the nickname from the session when it connects: reconnect.
  const old = socket;
  connect();
  old.close();
});

connect();
