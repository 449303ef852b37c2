// The console's behaviour beyond plain HTML (CSP: no inline script; this file is all there is).
"use strict";

function hl7Position(text, offset) {
  // The segment, field and component under the cursor at ``offset`` of a message, one segment a line.
  const start = text.lastIndexOf("\n", offset - 1) + 1;
  const line = text.slice(start, text.indexOf("\n", start) === -1 ? text.length : text.indexOf("\n", start));
  const before = text.slice(start, offset);
  const segment = line.slice(0, 3);
  if (!/^[A-Z][A-Z0-9]{2}$/.test(segment)) return null;
  // The separators are the message's own (MSH-1, MSH-2), HL7's defaults without an MSH.
  const msh = text.slice(0, 3) === "MSH" ? text : "";
  const fieldSep = msh.charAt(3) || "|";
  const componentSep = msh.charAt(4) || "^";
  const repetitionSep = msh.charAt(5) || "~";
  const fields = before.split(fieldSep);
  if (fields.length < 2) return { segment: segment, field: null };
  const field = segment === "MSH" ? fields.length : fields.length - 1;
  const component = fields[fields.length - 1].split(repetitionSep).pop().split(componentSep).length;
  return { segment: segment, field: field, component: component };
}

function showCursor(editor) {
  const target = document.getElementById(editor.dataset.cursorTarget);
  if (!target) return;
  const names = editor.dataset.fieldNames ? JSON.parse(editor.dataset.fieldNames) : {};
  const at = hl7Position(editor.value, editor.selectionStart);
  if (!at) { target.textContent = ""; return; }
  if (at.field === null) { target.textContent = "Segment " + at.segment; return; }
  const path = at.segment + "-" + at.field;
  const name = names[path] ? " " + names[path] : "";
  target.textContent = "Cursor in " + path + name + ", component " + at.component + " (" + path + "." + at.component + ")";
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-hl7-editor]").forEach(function (editor) {
    ["click", "keyup", "select", "focus"].forEach(function (kind) {
      editor.addEventListener(kind, function () { showCursor(editor); });
    });
  });
  document.querySelectorAll("[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      document.querySelectorAll('input[type=checkbox][name="' + box.dataset.selectAll + '"]').forEach(function (each) {
        each.checked = box.checked;
      });
    });
  });
  document.querySelectorAll("[data-back]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () { history.back(); });
  });
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
});

