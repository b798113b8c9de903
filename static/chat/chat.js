// The conversation page: Enter to send, composer state, catch-up after (re)connecting.
// No inline scripts anywhere, so the Content-Security-Policy can forbid them.
(function () {
  "use strict";

  var lastSent = "";

  function composer() { return document.getElementById("composer"); }
  function textarea() { return document.getElementById("composer-content"); }

  function shownMessageIds() {
    var ids = [];
    document.querySelectorAll("#messages [data-message-id]").forEach(function (el) {
      var id = parseInt(el.getAttribute("data-message-id"), 10);
      if (id) ids.push(id);
    });
    return ids;
  }

  function nearBottom() {
    var doc = document.scrollingElement || document.documentElement;
    return doc.scrollHeight - doc.scrollTop - doc.clientHeight < 120;
  }

  function scrollToBottom() {
    var doc = document.scrollingElement || document.documentElement;
    doc.scrollTop = doc.scrollHeight;
  }

  // Enter sends, Shift+Enter makes a new line (and IME composition is left alone).
  document.addEventListener("keydown", function (event) {
    if (event.target !== textarea() || event.key !== "Enter") return;
    if (event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    if (textarea().value.trim() === "") return;
    composer().requestSubmit();
  });

  function showNotice(text) {
    var notices = document.getElementById("notices");
    var p = document.createElement("p");
    p.className = "notice notice-error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    notices.replaceChildren(p);
  }

  // Refuse an over-long message here, before it is sent (the server checks again).
  document.addEventListener("htmx:wsConfigSend", function (event) {
    if (event.target !== composer()) return;
    var limit = parseInt(textarea().getAttribute("data-max-chars"), 10);
    var length = textarea().value.length;
    if (limit && length > limit) {
      event.preventDefault();
      showNotice("Your message is " + length.toLocaleString() + " characters long; the limit is " +
        limit.toLocaleString() + ". Nothing was sent.");
    }
  });

  // Edit a message of yours in place: the form under it opens with its text selected;
  // Enter (or Save) sends it as a new version, Escape or Cancel closes it. On the socket
  // the edited text goes as "content", like the composer's.
  function setEditing(form, open) {
    var toggle = document.querySelector("[aria-controls='" + form.id + "']");
    form.hidden = !open;
    if (toggle) toggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      var text = form.querySelector("textarea");
      text.focus();
      text.select();
    } else if (toggle) {
      toggle.focus();
    }
  }
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest(".edit-toggle");
    if (toggle) {
      var form = document.getElementById(toggle.getAttribute("aria-controls"));
      if (form) setEditing(form, form.hidden);
      return;
    }
    var cancel = event.target.closest(".edit-cancel");
    if (cancel) setEditing(cancel.closest(".edit-form"), false);
  });
  document.addEventListener("keydown", function (event) {
    var form = event.target.closest && event.target.closest(".edit-form");
    if (!form) return;
    if (event.key === "Escape") {
      setEditing(form, false);
    } else if (event.key === "Enter" && event.target.tagName === "TEXTAREA" &&
               !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      if (event.target.value.trim() !== "") form.requestSubmit();
    }
  });
  document.addEventListener("htmx:wsConfigSend", function (event) {
    if (!event.target.classList || !event.target.classList.contains("edit-form")) return;
    var parameters = event.detail.parameters;
    parameters.content = parameters.edited;
    delete parameters.edited;
  });

  // Empty the composer once the message is on its way; keep a copy in case it is refused.
  document.addEventListener("htmx:wsAfterSend", function (event) {
    if (event.target !== composer()) return;
    lastSent = textarea().value;
    textarea().value = "";
    document.getElementById("notices").innerHTML = "";
  });

  // Follow the reply while the reader is at the bottom. Layout is read on scroll events
  // and written once per animation frame, not once per frame from the socket.
  var stickToBottom = true;
  var scrollPending = false;
  window.addEventListener("scroll", function () {
    stickToBottom = nearBottom();
    showJump();
  }, { passive: true });

  // "Jump to latest" shows while the reader is scrolled up from the end.
  function showJump() {
    var jump = document.getElementById("jump-latest");
    if (jump) jump.hidden = stickToBottom;
  }

  document.addEventListener("click", function (event) {
    if (!event.target.closest("#jump-latest")) return;
    scrollToBottom();
    stickToBottom = true;
    showJump();
  });

  // Times as "5 min ago"; the element's title keeps the full date. Redone each minute.
  var relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  function showTimes() {
    var now = Date.now();
    document.querySelectorAll("time[data-relative]").forEach(function (el) {
      var then = Date.parse(el.getAttribute("datetime"));
      if (isNaN(then)) return;
      var seconds = Math.round((then - now) / 1000);
      var text;
      if (Math.abs(seconds) < 45) text = "just now";
      else if (Math.abs(seconds) < 3600) text = relative.format(Math.round(seconds / 60), "minute");
      else if (Math.abs(seconds) < 86400) text = relative.format(Math.round(seconds / 3600), "hour");
      else if (Math.abs(seconds) < 7 * 86400) text = relative.format(Math.round(seconds / 86400), "day");
      else text = new Date(then).toLocaleDateString();
      if (el.textContent !== text) el.textContent = text;
      if (!el.title) el.title = new Date(then).toLocaleString();
    });
  }
  document.addEventListener("DOMContentLoaded", showTimes);
  setInterval(showTimes, 60000);

  // A reply's reasoning is open while the model thinks and closes once, when the answer
  // begins (its summary then says "Thought for N s"); the reader can open it again.
  function closeFinishedThinking() {
    document.querySelectorAll("details[data-part=reasoning][data-auto-close]")
      .forEach(function (details) {
        var summary = details.querySelector("summary");
        if (summary && summary.getAttribute("data-thought") === "done") {
          details.open = false;
          details.removeAttribute("data-auto-close");
        }
      });
  }

  // A new conversation's first message stored it: the page takes its address.
  function createdUrl() {
    var created = document.getElementById("conversation-created");
    return created ? created.getAttribute("data-url") : null;
  }
  function takeCreatedAddress() {
    var created = document.getElementById("conversation-created");
    var url = createdUrl();
    if (!url || location.pathname === url) return;
    history.replaceState(null, "", url);
    var title = created.getAttribute("data-title");
    if (title) document.title = title;
  }

  // The socket of a new page reconnects as its conversation's once the first message has
  // stored it (htmx's ws extension keeps the address it first connected to).
  var createSocket = htmx.createWebSocket || function (url) {
    var socket = new WebSocket(url, []);
    socket.binaryType = htmx.config.wsBinaryType;
    return socket;
  };
  htmx.createWebSocket = function (url) {
    var created = document.getElementById("conversation-created");
    var path = created && created.getAttribute("data-socket");
    if (path) url = url.replace(/\/ws\/conversations\/new\/$/, path);
    return createSocket(url);
  };

  document.addEventListener("htmx:wsAfterMessage", function () {
    takeCreatedAddress();
    closeFinishedThinking();
    showTimes();
    var refused = document.querySelector("#notices [data-refused='send']");
    if (refused) {
      refused.removeAttribute("data-refused");
      if (textarea() && textarea().value === "" && lastSent) textarea().value = lastSent;
      lastSent = "";
    }
    if (stickToBottom && !scrollPending) {
      scrollPending = true;
      requestAnimationFrame(function () {
        scrollPending = false;
        if (stickToBottom) scrollToBottom();
      });
    }
  });

  // After every (re)connect, ask for what the page missed while it was away.
  document.addEventListener("htmx:wsOpen", function (event) {
    document.getElementById("chat").setAttribute("data-socket", "open");
    document.getElementById("connection").hidden = true;
    var shown = shownMessageIds();
    var since = shown.length ? Math.max.apply(null, shown) : 0;
    var message = JSON.stringify({ action: "sync", since: since, shown: shown.slice(-1000) });
    event.detail.socketWrapper.send(message, null);
  });

  // The application's close codes, named by the page (data-close-* on #chat).
  function closeCode(name) {
    return parseInt(document.getElementById("chat").getAttribute("data-close-" + name), 10);
  }

  document.addEventListener("htmx:wsClose", function (event) {
    var code = event.detail.event.code;
    document.getElementById("chat").setAttribute("data-socket", "closed");
    document.getElementById("chat").setAttribute("data-closed-with", String(code));
    var banner = document.getElementById("connection");
    if (!banner) return;
    if (code === closeCode("logged-out")) {
      banner.textContent = "You are logged out. Reload the page to log in again.";
    } else if (code === closeCode("too-many")) {
      banner.textContent = "Too many pages of this site are open: close some, then reload this one.";
    } else if (code === closeCode("not-found")) {
      banner.textContent = "This conversation no longer exists.";
    } else {
      banner.textContent = "Connection lost. Reconnecting…";
      if (code === 1009) showNotice("That message was too large to send.");
      // htmx reconnects by itself only after abnormal closes; a server restart says "going
      // away", and a page that fell behind reading is closed as too slow.
      if (code === 1001 || code === 1000 || code === 1009 || code === closeCode("too-slow")) {
        setTimeout(function () { event.detail.socketWrapper.reconnect(); }, 500);
      }
    }
    banner.hidden = false;
  });

  // Rename in place: the button opens a small form over the title; Escape or a save closes it.
  function renameForm() { return document.getElementById("rename-form"); }
  function setRenaming(open) {
    var form = renameForm(), button = document.querySelector(".rename-toggle");
    if (!form || !button) return;
    form.hidden = !open;
    button.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      var input = form.querySelector("input[name=title]");
      var title = document.getElementById("conversation-title");
      if (!input.value && title) input.value = title.textContent.trim();
      input.focus();
      input.select();
    } else {
      button.focus();
    }
  }
  document.addEventListener("click", function (event) {
    if (event.target.closest(".rename-toggle")) setRenaming(renameForm().hidden);
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && event.target.closest("#rename-form")) setRenaming(false);
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.elt === renameForm() && event.detail.successful) setRenaming(false);
  });

  // The settings form remembers whether its panel was open, so a save keeps it open.
  document.addEventListener("toggle", function (event) {
    var panel = event.target;
    if (!panel.classList || !panel.classList.contains("settings-panel")) return;
    var opened = panel.querySelector("input[name=opened]");
    if (opened) opened.value = panel.open ? "1" : "";
  }, true);

  document.addEventListener("DOMContentLoaded", scrollToBottom);
})();
