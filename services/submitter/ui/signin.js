// The sign-in page is a plain form (it works without script); this only says why the
// last attempt was sent back.
if (new URLSearchParams(location.search).has('refused')) {
  document.getElementById('refused').hidden = false;
}
