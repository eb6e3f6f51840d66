
(function () {
  var table = document.getElementById('board');
  if (!table) { return; }
  var heads = table.tHead.rows[0].cells, state = {key: null, dir: null};
  function val(row, i, num) {
    var v = row.cells[i].getAttribute('data-v');
    if (!num) { return v || ''; }
    return v === null || v === '' ? NaN : parseFloat(v);
  }
  function sortBy(key, dir) {
    var idx = -1, i;
    for (i = 0; i < heads.length; i++) {
      heads[i].removeAttribute('aria-sort');
      if (heads[i].getAttribute('data-key') === key) { idx = i; }
    }
    if (idx < 0) { return; }
    var num = heads[idx].getAttribute('data-type') === 'num', sign = dir === 'asc' ? 1 : -1;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = val(a, idx, num), y = val(b, idx, num);
      if (num) {
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }  // missing values last
        return sign * (x - y);
      }
      return sign * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads[idx].setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
    state.key = key; state.dir = dir;
    document.body.setAttribute('data-sorted', key + ':' + dir);
  }
  Array.prototype.forEach.call(heads, function (th) {
    var b = th.querySelector('button');
    if (!b) { return; }
    b.addEventListener('click', function () {
      var key = th.getAttribute('data-key'), num = th.getAttribute('data-type') === 'num';
      var dir = state.key === key ? (state.dir === 'asc' ? 'desc' : 'asc') : (num ? 'desc' : 'asc');
      sortBy(key, dir);
    });
  });
  function fromHash() {
    var m = /^#sort=([a-z_]+):(asc|desc)$/.exec(window.location.hash);
    if (m) { sortBy(m[1], m[2]); }
  }
  window.addEventListener('hashchange', fromHash);
  fromHash();
  if (!state.key) { state.key = 'acc'; state.dir = 'desc'; }
  document.body.setAttribute('data-js', 'ready');
}());
