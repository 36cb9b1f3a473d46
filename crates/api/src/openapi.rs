//! What the OpenAPI document says beyond the handlers' annotations: the
//! bearer-token scheme, and for every operation each error status it can
//! answer and the alphabet of the names in its path.

/// The `bearer` security scheme (the site's `api.token`).
pub(crate) struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Declares, for every operation under `/api/v1`, each error status it
/// can answer (all with an [`ApiError`](offsite_api_types::ApiError) body), and the name alphabet of
/// the names in its path. Declared here rather than per route so that no
/// route can forget one: 401 (token) and 500 (the site failed) apply to
/// every route; the rest follow from what the handler calls (the engine:
/// 400, 404, 409; replication and plans, which talk to the partner: also
/// 403 for its refusals and 502 when it cannot be reached).
pub(crate) struct ErrorResponses;

/// Error statuses of an operation, by operation id (the handler's name).
fn error_statuses(operation_id: &str) -> &'static [u16] {
    const PARTNERS: &[u16] = &[400, 401, 403, 404, 409, 500, 502];
    match operation_id {
        "site_show" => &[401],
        "settings_show" | "partner_list" | "authz_list" | "vm_list" | "volume_list"
        | "group_list" | "plan_list" | "overview" | "stream" => &[401, 500],
        "event_list" | "settings_update" => &[400, 401, 500],
        "partner_add" | "authz_add" | "volume_create" => &[400, 401, 409, 500],
        "vm_create" => &[400, 401, 404, 409, 500],
        "partner_show" | "vm_show" | "volume_show" | "volume_url" | "authz_remove" => {
            &[401, 404, 500]
        }
        "partner_update" => &[400, 401, 404, 500],
        "partner_remove" | "vm_delete" | "volume_delete" | "volume_clear_dirty" => {
            &[401, 404, 409, 500]
        }
        // Replication, PITs, failover and recovery plans.
        _ => PARTNERS,
    }
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => {
            "invalid: the body, a parameter or a value is malformed or out of range, or the object's state does not allow this (the message says what to run)"
        }
        401 => {
            "unauthorized: missing or wrong `Authorization: Bearer TOKEN` (the site's api.token), or an ended console session"
        }
        403 => "refused: the partner, or this site's role in the group, refuses the request",
        404 => {
            "not_found: a named object (group, VM, plan, run, volume, PIT, partner, authorization entry) does not exist"
        }
        409 => "conflict or busy: the name is taken, or the object is in use",
        500 => "internal: the site failed; see the daemon log",
        502 => "unreachable or partner_error: the partner could not be reached or failed",
        _ => "error",
    }
}

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with(offsite_api_types::API_PREFIX) {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                let id = op.operation_id.clone().unwrap_or_default();
                // A body or a query string can always be malformed (400),
                // whatever the table says.
                let parses = op.request_body.is_some()
                    || op
                        .parameters
                        .iter()
                        .flatten()
                        .any(|p| p.parameter_in == ParameterIn::Query);
                let statuses = error_statuses(&id)
                    .iter()
                    .copied()
                    .chain(parses.then_some(400));
                for status in statuses {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(error_description(status))
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ApiError")))
                                        .build(),
                                )
                                .into()
                        });
                }
                for param in op.parameters.iter_mut().flatten() {
                    if param.parameter_in == ParameterIn::Path
                        && matches!(param.name.as_str(), "name" | "pit" | "group")
                    {
                        param.schema = Some(offsite_api_types::schema::name());
                    }
                }
            }
        }
    }
}
