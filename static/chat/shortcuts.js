// Keyboard shortcuts: Ctrl+K (or / outside a text field) searches the conversations,
// Ctrl+Shift+O starts a new conversation (Cmd instead of Ctrl on a Mac).
(function () {
  "use strict";

  function typing(target) {
    return target.closest("input, textarea, select, [contenteditable]") !== null;
  }

  document.addEventListener("keydown", function (event) {
    var mod = event.ctrlKey || event.metaKey;
    var key = event.key.toLowerCase();
    if (mod && event.shiftKey && key === "o") {
      var form = document.querySelector("#sidebar form.new-conversation-form");
      if (form) { event.preventDefault(); form.requestSubmit(); }
      return;
    }
    if ((mod && !event.shiftKey && key === "k") || (key === "/" && !mod && !typing(event.target))) {
      var search = document.querySelector("#sidebar input[name=q]");
      if (!search) return;
      event.preventDefault();
      var toggle = document.querySelector(".drawer-toggle");
      if (toggle && getComputedStyle(toggle).display !== "none" &&
          !document.body.classList.contains("drawer-open")) toggle.click();
      search.focus();
      search.select();
    }
  });
})();
