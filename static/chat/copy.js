// Copy buttons of code blocks in rendered replies (conversations/rendering.py makes them).
// One listener on the document, so blocks that arrive later over the websocket work too,
// and no inline handlers, so the Content-Security-Policy can forbid inline script.
(function () {
  "use strict";

  var LABEL = "Copy";

  // For pages without the async clipboard API (plain http, older browsers).
  function copyWithTextarea(text) {
    var area = document.createElement("textarea");
    area.className = "copy-buffer";  // styled off-screen in markdown.css; no inline style
    area.value = text;
    area.setAttribute("readonly", "");
    area.setAttribute("aria-hidden", "true");
    document.body.appendChild(area);
    area.focus({ preventScroll: true });
    area.select();
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    area.remove();
    return copied;
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(
        function () { return true; },
        function () { return copyWithTextarea(text); }
      );
    }
    return Promise.resolve(copyWithTextarea(text));
  }

  function show(button, label) {
    button.textContent = label;
    clearTimeout(button.copyTimer);
    button.copyTimer = setTimeout(function () { button.textContent = LABEL; }, 1500);
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("button.copy-code") : null;
    if (!button) return;
    var block = button.closest(".code-block");
    var code = block && block.querySelector("pre code");
    if (!code) return;
    var focused = document.activeElement;
    copy(code.textContent).then(function (copied) {
      if (focused && focused !== document.activeElement && focused.focus) focused.focus();
      show(button, copied ? "Copied" : "Copy failed");
    });
  });
})();
