// Streamed sensor readings on the broker ingress: dev.faaspipe.sensor.reading.v1 in binary mode
// at a fixed arrival rate (k6 `constant-arrival-rate`, open loop, as ingress.js).
//
// Environment (-e KEY=VALUE):
//   URL        ingress URL (required)
//   READINGS   path of a JSON array of readings (canonical fields, `udi` = the machine), from
//              localdev.datagen.stream_readings; iteration i posts reading i mod length (required)
//   PREFIX     ce-id prefix, unique per run (required)
//   RATE       readings/s offered (required);  DURATION e.g. "20s" (required)
//   DATASET    the contract (default ai4i);  VUS / MAX_VUS as in ingress.js
//   SUMMARY    path of the JSON summary
//
// ce-id is PREFIX + iteration + "-" + the send time in ms since the epoch, and ce-time the same
// instant: the freshness bench reads the send time back from the reading id it finds online.
import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

const rate = parseInt(__ENV.RATE, 10);
const vus = parseInt(__ENV.VUS || `${Math.max(50, Math.ceil(rate / 10))}`, 10);
const maxVus = parseInt(__ENV.MAX_VUS || `${Math.max(vus, Math.min(2000, Math.max(200, rate / 2)))}`, 10);
const dataset = __ENV.DATASET || 'ai4i';
const readings = new SharedArray('readings', () => JSON.parse(open(__ENV.READINGS)));

const accepted = new Counter('accepted_202');
const status5xx = new Counter('status_5xx');
const otherStatus = new Counter('status_other');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    readings: {
      executor: 'constant-arrival-rate',
      rate: rate,
      timeUnit: '1s',
      duration: __ENV.DURATION,
      preAllocatedVUs: vus,
      maxVUs: maxVus,
      gracefulStop: '30s',
    },
  },
};

export default function () {
  const i = exec.scenario.iterationInTest;
  const reading = readings[i % readings.length];
  const now = new Date();
  const res = http.post(url(), JSON.stringify({ dataset: dataset, reading: reading }), {
    headers: {
      'ce-specversion': '1.0',
      'ce-type': 'dev.faaspipe.sensor.reading.v1',
      'ce-source': '/faaspipe/bench/stream',
      'ce-id': `${__ENV.PREFIX}${i}-${now.getTime()}`,
      'ce-time': now.toISOString(),
      'ce-subject': `${reading.udi}`,
      'content-type': 'application/json',
    },
    responseType: 'none',
    timeout: '30s',
  });
  if (res.status === 202) {
    accepted.add(1);
  } else if (res.status >= 500) {
    status5xx.add(1);
  } else {
    otherStatus.add(1);
  }
}

function url() {
  return __ENV.URL;
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY || "stdout"]: JSON.stringify(data) };
}
