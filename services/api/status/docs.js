// Starts Swagger UI on /openapi.json. "Try it out" sends requests from this origin, so the
// status page's session cookie (or an Authorization header set with "Authorize") goes along.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default validator badge would send the document to validator.swagger.io.
    validatorUrl: null,
  });
});
