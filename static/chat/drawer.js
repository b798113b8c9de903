// At phone width the conversation list is a drawer: the "Conversations" button opens it;
// a link in it, Escape, or a tap beside it closes it.
(function () {
  "use strict";

  function toggle() { return document.querySelector(".drawer-toggle"); }

  function setOpen(open) {
    document.body.classList.toggle("drawer-open", open);
    var button = toggle();
    if (button) button.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      var current = document.querySelector("#sidebar [aria-current=page]") ||
        document.querySelector("#sidebar a, #sidebar button");
      if (current) current.focus();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var button = toggle();
    if (!button) return;
    if (!document.getElementById("sidebar")) { button.remove(); return; }
    button.addEventListener("click", function () {
      setOpen(!document.body.classList.contains("drawer-open"));
    });
  });

  document.addEventListener("click", function (event) {
    if (!document.body.classList.contains("drawer-open")) return;
    if (event.target.closest(".drawer-toggle")) return;
    var sidebar = document.getElementById("sidebar");
    if (!sidebar.contains(event.target) || event.target.closest("a")) setOpen(false);
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && document.body.classList.contains("drawer-open")) {
      setOpen(false);
      var button = toggle();
      if (button) button.focus();
    }
  });
})();
