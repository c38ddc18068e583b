// The Chat page: one message to both panes' models, both answers streamed at once (server-sent events).
// Each pane keeps its own history, so each model sees its own earlier answers.
"use strict";
(() => {
  const form = document.getElementById("chat-form");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const sides = ["left", "right"];
  const history = { left: [], right: [] };
  let busy = 0;

  for (const id of ["chat-left", "chat-right"]) $(id).addEventListener("change", () => $("chat-models").submit());
  $("chat-system").addEventListener("change", reset);
  $("chat-reset").addEventListener("click", reset);
  $("chat-release").addEventListener("click", async () => {
    try { await TS.api("POST", "/api/chat/release"); $("chat-loaded").textContent = "models released"; } catch (e) { /* shown */ }
  });
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });

  function reset() {
    for (const side of sides) { history[side] = []; $(`log-${side}`).replaceChildren(); }
  }

  function add(side, role, text) {
    const node = TS.el("div", { class: `msg ${role}` }, text);
    $(`log-${side}`).append(node);
    return node;
  }

  function answer(side, id) {
    const node = add(side, "assistant streaming", "");
    let text = "";
    node.dataset.state = "waiting";
    return new Promise((resolve) => {
      const finish = (state) => {
        node.classList.remove("streaming");
        node.dataset.state = state;
        if (state === "done") history[side].push({ role: "assistant", content: text.trim() });
        else history[side].pop();  // a failed answer leaves the message out of this side's history
        resolve();
      };
      const source = TS.stream(`/api/chat/stream/${encodeURIComponent(id)}`, (ev) => {
        if (ev.status === "loading") node.textContent = "(loading the models…)";
        else if (ev.status === "answering") { node.textContent = ""; node.dataset.state = "streaming"; }
        else if (ev.text !== undefined) { text += ev.text; node.textContent = text; node.dataset.state = "streaming"; }
        else if (ev.done) { source.close(); finish("done"); }
        else if (ev.error) { source.close(); node.textContent = ev.error; node.classList.add("error"); finish("error"); }
      }, { onError: () => { if (node.dataset.state !== "done") { source.close(); node.textContent ||= "(the stream broke off)"; finish("error"); } } });
    });
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || busy) return;
    for (const side of sides) { history[side].push({ role: "user", content: text }); add(side, "user", text); }
    $("chat-input").value = "";
    const body = {
      left: $("chat-left").value, right: $("chat-right").value, system: $("chat-system").value,
      left_messages: history.left, right_messages: history.right,
      max_tokens: Number($("chat-max-tokens").value), temperature: Number($("chat-temperature").value),
    };
    busy = 1;
    $("chat-send").disabled = true;
    try {
      const ids = await TS.api("POST", "/api/chat/send", body);
      await Promise.all(sides.map((side) => answer(side, ids[side])));
      const status = await TS.api("GET", "/api/chat/status", undefined, { quiet: true });
      $("chat-loaded").textContent = status.loaded ? `loaded: ${status.loaded.join(", ")}` : "no models loaded";
    } catch (err) {
      for (const side of sides) history[side].pop();
    } finally {
      busy = 0;
      $("chat-send").disabled = false;
    }
  });
})();
