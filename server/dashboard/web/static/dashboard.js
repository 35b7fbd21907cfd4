// ipledger dashboard: fetches api/dashboard.json every few seconds and draws the page from it.
// Everything is built with DOM calls and textContent (no HTML from data), and only the relative
// URL of the JSON document is fetched.
(function () {
  'use strict';

  var SVG_NS = 'http' + '://www.w3.org/2000/svg'; // a namespace name, never fetched
  var DOC_URL = 'api/dashboard.json';
  var DEFAULT_REFRESH_MS = 3000;

  // Parts of a subnet's budget, in bar order; they add up to the subnet's size.
  var SEGMENTS = [
    ['reserved', 'reserved (AWS)', 'kept by AWS in every subnet'],
    ['foreign', 'foreign', 'used by ENIs ipledger does not manage'],
    ['eni_primary', 'ENI primaries', 'primary addresses of managed nodes\u2019 ENIs'],
    ['in_use', 'in use by pods', 'leased addresses pods use'],
    ['idle', 'idle on nodes', 'leased addresses free on their node (warm pool)'],
    ['prewarm_reserved', 'pre-warm reserved', 'reserved for pre-warm reservations'],
    ['free', 'free', 'nobody uses them']
  ];
  // Colours of EC2 actions in the chart (by position in the sorted action list).
  var PALETTE = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#0891b2', '#ca8a04', '#db2777', '#4b5563', '#65a30d', '#1e3a8a'];

  var renders = 0;
  var lastDoc = null;

  function el(tag, attrs) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    for (var i = 2; i < arguments.length; i++) append(e, arguments[i]);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    for (var i = 2; i < arguments.length; i++) append(e, arguments[i]);
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === undefined || v === null || v === false) return;
      if (k === 'text') e.textContent = String(v);
      else if (k === 'class') e.setAttribute('class', v);
      else e.setAttribute(k, v === true ? '' : String(v));
    });
  }
  function append(e, c) {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { append(e, x); }); return; }
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  function replace(id, node) {
    var host = document.getElementById(id);
    host.replaceChildren();
    append(host, node);
  }

  function n(v) { return (v || 0).toLocaleString('en-US'); }
  function pct(part, whole) { return whole > 0 ? (100 * part / whole) : 0; }
  function fmtPct(p) {
    if (p > 0 && p < 0.1) return '<0.1%';
    return (p >= 10 || p === 0 ? p.toFixed(0) : p.toFixed(1)) + '%';
  }
  function plural(k, one, many) { return n(k) + ' ' + (k === 1 ? one : many); }
  function fmtTime(s) {
    if (!s) return '\u2014';
    var d = new Date(s);
    return d.toLocaleTimeString('en-GB', { hour12: false });
  }
  function fmtDuration(sec) {
    if (sec === null || sec === undefined) return '\u2014';
    if (sec < 60) return Math.round(sec) + ' s';
    var m = Math.round(sec / 60);
    if (m < 60) return m + ' min';
    var h = Math.floor(m / 60), mm = m % 60;
    if (h < 48) return h + ' h' + (mm ? ' ' + mm + ' min' : '');
    var d = Math.floor(h / 24), hh = h % 24;
    return d + ' d' + (hh ? ' ' + hh + ' h' : '');
  }
  function signed(x) { return (x > 0 ? '+' : x < 0 ? '\u2212' : '\u00b1') + Math.abs(x).toFixed(1); }

  // ---- header ----
  function renderHeader(doc) {
    var c = doc.cluster || {};
    document.getElementById('cluster-name').textContent = c.name ? '\u2014 cluster ' + c.name : '';
    document.title = 'ipledger ' + (c.name || '') + ' dashboard';
    function item(label, value, cls) {
      return el('div', null, el('dt', { text: label }), el('dd', { text: value, class: cls }));
    }
    replace('cluster-status', [
      item('answered by', (c.replica || '?') + (c.is_leader ? ' (leader)' : ' (standby)')),
      item('leader', c.leader || 'none known', c.leader ? null : 'bad'),
      item('store', c.store_healthy ? 'healthy' : 'unhealthy: ' + (c.store_message || ''), c.store_healthy ? 'good' : 'bad'),
      item('revision', n(c.revision)),
      item('nodes', n(c.nodes)),
      item('subnets', n(c.subnets)),
      item('version', c.version || '?')
    ]);
  }

  // ---- subnets ----
  function renderLegend() {
    var host = document.getElementById('budget-legend');
    if (host.childElementCount) return;
    SEGMENTS.forEach(function (s) {
      append(host, el('li', { title: s[2] }, el('span', { class: 'swatch seg-' + s[0], 'aria-hidden': 'true' }), s[1]));
    });
  }

  function forecastText(s) {
    var f = s.forecast || {};
    if (s.headroom === 0) return { text: 'no headroom left', bad: true };
    if (!f.window_seconds) return { text: 'not enough history yet' };
    var trend = signed(f.held_per_hour || 0) + '/h over ' + fmtDuration(f.window_seconds);
    if (f.time_to_exhaustion_seconds === null || f.time_to_exhaustion_seconds === undefined) {
      return { text: 'not exhausting (' + trend + ')' };
    }
    return { text: 'exhausted in ~' + fmtDuration(f.time_to_exhaustion_seconds) + ' (' + trend + ')', bad: f.time_to_exhaustion_seconds < 6 * 3600 };
  }

  function subnetCard(s) {
    var headId = 'subnet-' + s.subnet_id;
    var parts = SEGMENTS.map(function (seg) {
      return seg[1] + ' ' + n(s[seg[0]]);
    }).join(', ');
    var bar = el('div', {
      class: 'bar', role: 'img', 'data-subnet': s.subnet_id,
      'aria-label': 'Budget of ' + s.subnet_id + ', ' + n(s.size) + ' addresses: ' + parts
    });
    SEGMENTS.forEach(function (seg) {
      var v = s[seg[0]] || 0;
      var d = el('div', {
        class: 'seg seg-' + seg[0] + (v > 0 ? ' nonzero' : ''), 'data-kind': seg[0], 'data-value': v,
        title: seg[1] + ': ' + n(v) + ' (' + fmtPct(pct(v, s.size)) + ')'
      });
      d.style.flexGrow = String(v);
      bar.appendChild(d);
    });
    // The taken part again at full width: on a large subnet it is a sliver of the bar above.
    var taken = s.size - s.free;
    var zoom = el('div', { class: 'zoom', role: 'img', 'data-subnet': s.subnet_id,
      'aria-label': 'The ' + n(taken) + ' taken addresses of ' + s.subnet_id + ', zoomed' });
    SEGMENTS.forEach(function (seg) {
      var v = s[seg[0]] || 0;
      if (seg[0] === 'free' || !v) return;
      var d = el('div', { class: 'seg seg-' + seg[0], 'data-kind': seg[0], title: seg[1] + ': ' + n(v) + ' of ' + n(taken) + ' taken' });
      d.style.flexGrow = String(v);
      zoom.appendChild(d);
    });
    var zoomRow = el('div', { class: 'zoom-row' },
      el('span', { class: 'zoom-label', text: 'taken \u00d7' + (taken ? Math.round(s.size / taken) : 1), title: 'the taken addresses, magnified to the full width' }), zoom);
    var counts = el('ul', { class: 'counts', 'aria-label': 'Addresses of ' + s.subnet_id });
    SEGMENTS.forEach(function (seg) {
      append(counts, el('li', { 'data-kind': seg[0] },
        el('span', { class: 'swatch seg-' + seg[0], 'aria-hidden': 'true' }),
        seg[1] + ' ', el('b', { class: 'num', text: n(s[seg[0]]) })));
    });

    var freePct = pct(s.free_prefixes, s.total_prefixes);
    var strip = el('span', {
      class: 'strip', role: 'meter', 'aria-label': 'free /28 blocks of ' + s.subnet_id,
      'aria-valuemin': 0, 'aria-valuemax': s.total_prefixes || 0, 'aria-valuenow': s.free_prefixes || 0,
      title: n(s.free_prefixes) + ' of ' + n(s.total_prefixes) + ' aligned /28 blocks are entirely free'
    });
    var fill = el('span', { class: 'strip-fill' });
    fill.style.width = freePct.toFixed(2) + '%';
    strip.appendChild(fill);

    var fc = forecastText(s);
    function fact(label, value, opts) {
      opts = opts || {};
      return el('div', { class: opts.wide ? 'wide' : null, 'data-fact': opts.key },
        el('dt', { text: label }), el('dd', { class: opts.bad ? 'bad' : null }, value));
    }
    var facts = el('dl', { class: 'facts' },
      fact('held', n(s.held) + ' (' + fmtPct(pct(s.held, s.size)) + ')', { key: 'held' }),
      fact('headroom', n(s.headroom), { key: 'headroom', bad: s.headroom === 0 }),
      fact('budget cap', s.max_held ? n(s.budget_cap) : n(s.budget_cap) + ' (no cap)', { key: 'budget_cap' }),
      fact('keep free', n(s.keep_free), { key: 'keep_free' }),
      fact('free /28 blocks', [el('span', { class: 'num', text: n(s.free_prefixes) + ' / ' + n(s.total_prefixes) + ' (' + fmtPct(freePct) + ')' }), strip], { key: 'free_prefixes', wide: true }),
      fact('forecast of exhaustion', fc.text, { key: 'forecast', wide: true, bad: fc.bad }),
      fact('pod subnet of', (s.pod_subnet_of || []).length ? s.pod_subnet_of.map(function (r) {
        return r.policy + ' (' + r.availability_zone + ')';
      }).join(', ') : 'no policy (nodes\u2019 own subnet)', { key: 'pod_subnet_of', wide: true })
    );
    return el('article', { class: 'subnet', 'data-subnet': s.subnet_id, 'aria-labelledby': headId },
      el('div', { class: 'subnet-head' },
        el('h3', { id: headId, text: s.name || s.subnet_id }),
        el('span', { text: s.cidr }),
        el('span', { class: 'muted', text: 'AZ ' + s.availability_zone }),
        el('span', { class: 'sub' },
          s.name ? el('span', { class: 'id', text: s.subnet_id }) : null,
          el('span', { class: 'muted num', text: n(s.size) + ' addresses, ' + n(s.size - s.free) + ' taken (' + fmtPct(pct(s.size - s.free, s.size)) + ')' }))),
      bar, zoomRow, counts, facts);
  }

  function renderSubnets(doc) {
    renderLegend();
    var list = doc.subnets || [];
    if (!list.length) {
      replace('subnet-list', el('p', { class: 'empty', text: 'No subnets yet: the cluster learns a subnet when a node registers in it.' }));
      return;
    }
    replace('subnet-list', list.map(subnetCard));
  }

  // ---- tables ----
  function table(caption, cols, rows, attrs) {
    var t = el('table', attrs, el('caption', { text: caption }));
    var hr = el('tr');
    cols.forEach(function (c) { hr.appendChild(el('th', { scope: 'col', class: c.num ? 'n' : null, title: c.title, text: c.label })); });
    t.appendChild(el('thead', null, hr));
    var tb = el('tbody');
    rows.forEach(function (r) {
      var tr = el('tr', r.attrs);
      r.cells.forEach(function (v, i) {
        var c = cols[i];
        var cell = el(i === 0 ? 'th' : 'td', { scope: i === 0 ? 'row' : null, class: [c.num ? 'n' : '', v && v.cls ? v.cls : ''].join(' ').trim() || null });
        append(cell, v && v.node !== undefined ? v.node : v && v.text !== undefined ? v.text : String(v));
        tr.appendChild(cell);
      });
      tb.appendChild(tr);
    });
    t.appendChild(tb);
    return t;
  }
  function yesNo(b, goodWhen) {
    return { text: b ? 'yes' : 'no', cls: b === goodWhen ? 'good' : 'bad' };
  }

  function renderNodes(doc) {
    var nodes = doc.nodes || [];
    if (!nodes.length) {
      replace('node-table-wrap', el('p', { class: 'empty', text: 'No nodes registered.' }));
      return;
    }
    var cols = [
      { label: 'Node' }, { label: 'Type' }, { label: 'AZ' }, { label: 'Subnet' },
      { label: 'ENIs', num: true }, { label: 'Held', num: true, title: 'pod addresses leased to the node' },
      { label: 'In use', num: true }, { label: 'Idle', num: true }, { label: 'Target free', num: true },
      { label: 'Deficit', num: true, title: 'addresses the node lacks to reach its target' },
      { label: 'Connected' }, { label: 'Draining' }
    ];
    var rows = nodes.map(function (x) {
      return {
        attrs: { 'data-node': x.node_name },
        cells: [x.node_name, x.instance_type, x.availability_zone, x.subnet_id, n(x.enis), n(x.held), n(x.in_use), n(x.idle), n(x.target_free),
          { text: n(x.deficit), cls: x.deficit > 0 ? 'bad' : null },
          yesNo(x.connected, true), { text: x.draining ? 'draining' : 'no', cls: x.draining ? 'bad' : null }]
      };
    });
    replace('node-table-wrap', table(plural(nodes.length, 'node', 'nodes'), cols, rows, { id: 'node-table' }));
  }

  function renderPrewarms(doc) {
    var list = doc.prewarms || [];
    if (!list.length) {
      replace('prewarm-table-wrap', el('p', { class: 'empty', text: 'No pre-warm reservations.' }));
      return;
    }
    var cols = [{ label: 'Reservation' }, { label: 'Subnet' }, { label: 'AZ' }, { label: 'Type' }, { label: 'Nodes', num: true },
      { label: 'Addresses/node', num: true }, { label: 'State' }, { label: 'ENIs ready', num: true }, { label: 'Reserved', num: true }, { label: 'Expires' }];
    var rows = list.map(function (p) {
      return {
        attrs: { 'data-prewarm': p.id },
        cells: [p.id, p.subnet_id, p.availability_zone, p.instance_type, n(p.node_count), n(p.addresses_per_node), p.state,
          n(p.enis_ready) + ' / ' + n(p.enis), n(p.reserved_addresses), fmtTime(p.expires_at)]
      };
    });
    replace('prewarm-table-wrap', table(plural(list.length, 'reservation', 'reservations'), cols, rows, { id: 'prewarm-table' }));
  }

  // ---- EC2 ----
  function niceMax(v) {
    if (v <= 1) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }
  function colourOf(actions, a) {
    var i = actions.indexOf(a);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  function chart(doc) {
    var e = doc.ec2 || {};
    var samples = e.samples || [];
    var actions = e.actions || [];
    var wrap = document.getElementById('ec2-chart-wrap');
    var W = Math.max(320, Math.floor(wrap.clientWidth - 16)), H = 180;
    var L = 44, R = 8, T = 10, B = 22;
    var pw = W - L - R, ph = H - T - B;
    var every = e.sample_every_seconds || 5;
    var total = 0, maxTotal = 0;
    samples.forEach(function (s) { total += s.total; if (s.total > maxTotal) maxTotal = s.total; });
    var end = samples.length ? Date.parse(samples[samples.length - 1].time) : Date.parse(doc.generated_at);
    var covered = samples.length ? (end - (Date.parse(samples[0].time) - samples[0].seconds * 1000)) / 1000 : 0;
    var span = Math.min(e.history_seconds || 3600, Math.max(covered, 30 * every));
    var start = end - span * 1000;
    var yMax = niceMax(maxTotal);
    function x(t) { return L + pw * (t - start) / (span * 1000); }
    function y(v) { return T + ph - ph * v / yMax; }

    var label = 'EC2 calls per ' + every + ' s interval over the last ' + fmtDuration(span) + ': ' + n(total) + ' calls, ' +
      n(e.throttled_in_history) + ' throttled';
    var g = svg('svg', { id: 'ec2-chart', role: 'img', 'aria-labelledby': 'ec2-chart-title', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, 'data-samples': samples.length },
      svg('title', { id: 'ec2-chart-title', text: label }));
    [0, yMax / 2, yMax].forEach(function (v) {
      g.appendChild(svg('line', { class: v ? 'grid' : 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      g.appendChild(svg('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end', text: Number.isInteger(v) ? v : v.toFixed(1) }));
    });
    g.appendChild(svg('line', { class: 'axis', x1: L, x2: L, y1: T, y2: T + ph }));
    [start, start + span * 500, end].forEach(function (t, i) {
      g.appendChild(svg('text', { x: x(t), y: H - 6, 'text-anchor': ['start', 'middle', 'end'][i], text: fmtTime(new Date(t).toISOString()) }));
    });
    g.appendChild(svg('text', { x: L + 4, y: T + 10, text: 'calls / ' + every + ' s' }));

    samples.forEach(function (s) {
      var t1 = Date.parse(s.time), t0 = t1 - s.seconds * 1000;
      if (t1 < start) return;
      var x0 = Math.max(L, x(t0)), x1 = x(t1);
      var w = Math.max(1, x1 - x0 - (x1 - x0 > 3 ? 1 : 0));
      var tip = fmtTime(s.time) + ' (' + Math.round(s.seconds) + ' s): ';
      if (s.state !== 'leader') {
        g.appendChild(svg('rect', { class: 'standby-band', x: x0, y: T, width: w, height: ph, 'data-state': s.state },
          svg('title', { text: tip + (s.state === 'standby' ? 'standby, the leader calls EC2' : 'limiter unavailable') })));
        return;
      }
      var acc = 0;
      var parts = [];
      actions.forEach(function (a) {
        var v = (s.calls || {})[a] || 0;
        if (!v) return;
        parts.push(a + ' ' + v);
        g.appendChild(svg('rect', { x: x0, y: y(acc + v), width: w, height: y(acc) - y(acc + v), fill: colourOf(actions, a), 'data-action': a },
          svg('title', { text: tip + a + ' ' + v })));
        acc += v;
      });
      if (s.throttled > 0) {
        g.appendChild(svg('rect', { class: 'throttle', x: x0, y: Math.max(T - 6, y(acc) - 5), width: Math.max(w, 3), height: 4, 'data-throttled': s.throttled },
          svg('title', { text: tip + s.throttled + ' throttled' + (s.errors ? ', ' + s.errors + ' other errors' : '') })));
      }
    });
    if (!samples.length) {
      g.appendChild(svg('text', { x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle', text: 'no samples yet: the first arrives within ' + every + ' s' }));
    }
    var byAction = {};
    (e.totals || []).forEach(function (c) { byAction[c.action] = (byAction[c.action] || 0) + c.count; });
    var legend = el('ul', { class: 'chart-legend', 'aria-label': 'Actions in the chart with their calls over the window' });
    actions.forEach(function (a) {
      var sw = el('span', { class: 'swatch', 'aria-hidden': 'true' });
      sw.style.background = colourOf(actions, a);
      append(legend, el('li', { 'data-action': a }, sw, a + ' ', el('b', { class: 'num', text: n(byAction[a]) })));
    });
    append(legend, el('li', null, el('span', { class: 'swatch throttle-swatch', 'aria-hidden': 'true' }), 'throttled ', el('b', { class: 'num', text: n(e.throttled_in_history) })));
    append(legend, el('li', null, el('span', { class: 'swatch standby-swatch', 'aria-hidden': 'true' }), 'standby / unavailable'));
    return [g, legend];
  }

  function renderEC2(doc) {
    var e = doc.ec2 || {};
    var st = document.getElementById('ec2-state');
    st.className = 'ec2-state ' + (e.state || '');
    st.setAttribute('data-state', e.state || '');
    st.textContent = e.state === 'standby' ? 'standby \u2014 EC2 calls are made by the leader at ' + (e.leader || '(none known)')
      : e.state === 'leader' ? 'This replica leads and makes every EC2 call under one limiter. ' + n(e.throttled_total) + ' throttled since it started.'
      : e.message || 'EC2 limiter unavailable';
    replace('ec2-chart-wrap', chart(doc));

    var byAction = {};
    (e.totals || []).forEach(function (c) {
      var r = byAction[c.action] || (byAction[c.action] = { ok: 0, throttled: 0, errors: 0, codes: [], total: 0 });
      if (c.outcome === 'ok') r.ok += c.count;
      else if (c.outcome === 'throttled') r.throttled += c.count;
      else { r.errors += c.count; r.codes.push(c.outcome + ' ' + c.count); }
      r.total += c.count;
    });
    var acts = Object.keys(byAction).sort();
    if (acts.length) {
      replace('ec2-totals-wrap', table('Calls over the last ' + fmtDuration(e.history_seconds) + ' by outcome',
        [{ label: 'Action' }, { label: 'OK', num: true }, { label: 'Throttled', num: true }, { label: 'Errors', num: true }, { label: 'Total', num: true }],
        acts.map(function (a) {
          var r = byAction[a];
          return { attrs: { 'data-action': a }, cells: [a, n(r.ok), { text: n(r.throttled), cls: r.throttled ? 'bad' : null },
            { text: n(r.errors) + (r.codes.length ? ' (' + r.codes.join(', ') + ')' : ''), cls: r.errors ? 'bad' : null }, n(r.total)] };
        }), { id: 'ec2-totals' }));
    } else {
      replace('ec2-totals-wrap', el('p', { class: 'empty', text: e.state === 'standby' ? 'No EC2 calls from this replica: it is a standby.' : 'No EC2 calls in the window.' }));
    }
    if ((e.buckets || []).length) {
      replace('ec2-buckets-wrap', table('Token buckets (as the server paces itself)',
        [{ label: 'Bucket' }, { label: 'Tokens', num: true, title: 'tokens now / capacity' },
          { label: 'Refill/s', num: true, title: 'refill rate in use / EC2\u2019s rate: lower after throttling, recovering gradually' }],
        e.buckets.map(function (b) {
          // The server always paces a little under EC2's rate; far under it means it backed off after throttling.
          var slowed = b.effective_refill_per_second < 0.9 * b.refill_per_second;
          return { attrs: { 'data-bucket': b.name, title: (b.actions || []).join(', ') },
            cells: [b.name, b.tokens.toFixed(1) + ' / ' + n(b.capacity),
              { text: b.effective_refill_per_second.toFixed(2) + ' / ' + b.refill_per_second.toFixed(2) + (slowed ? ' (backed off)' : ''), cls: slowed ? 'bad' : null }] };
        }), { id: 'ec2-buckets' }));
      replace('ec2-queue-wrap', table('Calls waiting by priority', [{ label: 'Priority' }, { label: 'Waiting', num: true }],
        (e.queue || []).map(function (q) { return { cells: [q.priority.replace(/_/g, ' '), n(q.waiting)] }; }), { id: 'ec2-queue' }));
    } else {
      replace('ec2-buckets-wrap', el('p', { class: 'empty', text: 'Only the leader paces EC2 calls; its limiter is not shown here.' }));
      replace('ec2-queue-wrap', null);
    }
  }

  function render(doc) {
    renderHeader(doc);
    var errs = document.getElementById('errors');
    if (doc.errors && doc.errors.length) {
      errs.hidden = false;
      errs.textContent = 'Some data could not be read: ' + doc.errors.join('; ');
    } else {
      errs.hidden = true;
      errs.textContent = '';
    }
    renderSubnets(doc);
    renderNodes(doc);
    renderPrewarms(doc);
    renderEC2(doc);
    renders++;
    document.body.setAttribute('data-renders', String(renders));
    document.body.setAttribute('data-generated-at', doc.generated_at || '');
  }

  function setRefresh(text, stale) {
    var r = document.getElementById('refresh');
    r.textContent = text;
    r.className = stale ? 'refresh stale' : 'refresh';
  }

  function refresh() {
    var next = lastDoc && lastDoc.refresh_seconds ? lastDoc.refresh_seconds * 1000 : DEFAULT_REFRESH_MS;
    fetch(DOC_URL, { cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.json();
      })
      .then(function (doc) {
        lastDoc = doc;
        render(doc);
        setRefresh('Last refresh ' + fmtTime(new Date().toISOString()) + ' (data of ' + fmtTime(doc.generated_at) + ')', false);
      })
      .catch(function (err) {
        var msg = 'Refresh failed at ' + fmtTime(new Date().toISOString()) + ': ' + err.message +
          (lastDoc ? '; showing data of ' + fmtTime(lastDoc.generated_at) : '');
        setRefresh(msg, true);
        var errs = document.getElementById('errors'); // an alert: announced, unlike the routine refresh line
        errs.hidden = false;
        errs.textContent = msg;
      })
      .then(function () { window.setTimeout(refresh, next); });
  }

  refresh();
})();
